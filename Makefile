# lvs-userspace: build, test and demo. Run as root on Debian 12 (or similar).
#   make demo   - builds everything, sends real traffic through DR, IPIP, NAT and FULLNAT in its own namespaces
#   make test   - builds everything, runs the linters (lint: ruff, mypy), tests/unit, the C core
#                 under ASan/UBSan and valgrind (test-sanitize), then tests/netns (lbd's default
#                 steering, again with --steering iptables, again on AF_XDP), then tests/kernel
#                 (test-kernel: kernel IPVS vs lbd in a qemu guest)
#   make fuzz   - libFuzzer run of the packet core, then of the preload library's wire code
#                 (FUZZ_SECONDS each, default 60)
#   make bench  - the benchmark suite (bench/README.md; ~14 min), bench-quick a smoke run
# Every target is idempotent.

SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
PYTEST  := $(PY) -m pytest
STAMP   := $(VENV)/.lvs-userspace-installed

# System packages, each for a reason (a brand-new Debian 12 has none of them; `deps` installs the
# missing ones, so `make test` and `make demo` need nothing installed by hand):
#   build:    python3-venv python3-dev gcc make libnetfilter-queue-dev libmnl-dev
#   runtime:  nftables (the nft command of lbd's default steering, lb/nftsteer.py), iptables ipset (its
#             `--steering iptables` and fwmark services), iproute2
#   tests:    tcpdump netsniff-ng ebtables wrk (netns tests, bench), valgrind (test-sanitize),
#             clang + libclang-rt-14-dev (fuzz: libclang_rt.fuzzer/asan, only a recommendation
#             of Debian's clang), systemd (systemd-analyze verify on the units),
#             mandoc + man-db (man pages linted), bash (completion tested), liblua5.3-0 +
#             libopentracing-c-wrapper0 (haproxy's libraries: build/tools/haproxy, PROXY protocol tests),
#             ipvsadm (Debian's unmodified tool driving lbd through lbd-exec), linux-libc-dev
#             (linux/ip_vs.h: the preload library's constants, the ABI layout tests),
#             libnl-3-200 libnl-genl-3-200 libnftnl11 libsnmp40 libglib2.0-0 (keepalived's shared
#             libraries that a clean Debian 12 lacks: build/tools/keepalived, keepalived netns tests)
#   afxdp:    libbpf-dev libxdp-dev (the AF_XDP packet source: native/src/xsk*.c link libbpf and libxdp's
#             xsk API; clang -target bpf, above, builds native/bpf/lb_xdp.bpf.c into $(BPF_OBJ)),
#             ethtool (its netns tests turn the veths' checksum offload off: docs/afxdp.md "veth")
DEB_PKGS := python3-venv python3-dev gcc make iptables ipset iproute2 \
            libnetfilter-queue-dev libmnl-dev tcpdump netsniff-ng ebtables wrk valgrind clang \
            libclang-rt-14-dev systemd mandoc man-db bash liblua5.3-0 libopentracing-c-wrapper0 \
            ipvsadm linux-libc-dev libnl-3-200 libnl-genl-3-200 libnftnl11 libsnmp40 libglib2.0-0 \
            libbpf-dev libxdp-dev ethtool bpftool nftables

# Several builds may install at once (parallel CI jobs, an admin's apt run): wait for dpkg's
# lock instead of failing on it. apt-get update has no such option for the lists lock: retried.
APT_LOCK_WAIT_S ?= 600
APT_GET := apt-get -o DPkg::Lock::Timeout=$(APT_LOCK_WAIT_S) -y -q

# Inputs of the editable install (the cffi extension is compiled from native/).
# compat: a plain path entry for this tree (a .pth line) instead of setuptools' import-hook finder,
# which every Python start of the venv would import (pathlib, urllib, importlib.util: ~20 ms of each
# lbadm command on a slow machine; issue 15 item 2 wants one under 0.1 s).
EDITABLE := --config-settings editable_mode=compat -e
BUILD_INPUTS := pyproject.toml setup.py $(wildcard native/build_ffi.py native/include/*.h native/src/*.[ch] native/preload/*.[ch])

.PHONY: all deps install-deps install uninstall venv build lint test test-unit test-dist test-sanitize test-netns test-netns-iptables test-netns-afxdp fuzz demo bench bench-quick clean distclean
.PHONY: test-kernel kernel-deps

all: build

# Installs only what is missing; `apt-get update` only when a missing package
# has no candidate in the local package lists (or the install fails on stale lists).
# $(call apt_install,PACKAGES)
define apt_install
	@missing=""; \
	for p in $(1); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "deps: all system packages present"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "deps: missing:$$missing -- run as root" >&2; exit 1; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	echo "deps: installing$$missing"; \
	need_update=0; \
	for p in $$missing; do \
	  apt-cache policy "$$p" 2>/dev/null | grep -q 'Candidate: [^(]' || need_update=1; \
	done; \
	apt_update() { for try in 1 2 3 4 5 6; do apt-get -o DPkg::Lock::Timeout=$(APT_LOCK_WAIT_S) update -q && return 0; \
	  echo "deps: apt-get update failed (try $$try; another apt may hold the lists lock), retrying in 10 s" >&2; sleep 10; done; return 1; }; \
	if [ $$need_update = 1 ]; then apt_update; fi; \
	$(APT_GET) install --no-install-recommends $$missing || \
	  { apt_update && $(APT_GET) install --no-install-recommends $$missing; }
endef

deps:
	$(call apt_install,$(DEB_PKGS))

# $(call deb_tool,PACKAGE,FILE,VERSION-ARGS): the recipe of a tool taken out of Debian's PACKAGE into
# build/tools without installing it (installing would enable and start a host-wide service): the .deb
# downloaded (the lists updated once if apt does not know it yet), FILE (its path in the package)
# copied to the target, the rest removed, and the tool run once with VERSION-ARGS to show it works.
# Each package unpacks in its own directory, so that make -j fetches several at once.
define deb_tool
	@mkdir -p build/tools/$(1).deb.d
	cd build/tools/$(1).deb.d && rm -f $(1)_*.deb && \
	  { apt-get download -q $(1) || { apt-get update -q && apt-get download -q $(1); }; }
	dpkg-deb -x build/tools/$(1).deb.d/$(1)_*.deb build/tools/$(1).deb.d/root
	cp build/tools/$(1).deb.d/root/$(2) $@
	rm -rf build/tools/$(1).deb.d
	$@ $(3) 2>&1 | head -1
endef

# promtool (tests check lbd --metrics' exposition with it) comes from Debian's prometheus package.
PROMTOOL := build/tools/promtool
# haproxy (the PROXY protocol netns tests read the client address it parsed). Two of its shared
# libraries are not on a clean Debian 12 (liblua5.3-0, libopentracing-c-wrapper0): DEB_PKGS installs
# them; the tests skip, naming what is missing, if not.
HAPROXY := build/tools/haproxy
# keepalived (Debian's unmodified binary driving lbd through lbd-exec: tests/netns/test_keepalived.py).
KEEPALIVED := build/tools/keepalived
TOOLS := $(PROMTOOL) $(HAPROXY) $(KEEPALIVED)

$(PROMTOOL):
	$(call deb_tool,prometheus,usr/bin/promtool,--version)

$(HAPROXY):
	$(call deb_tool,haproxy,usr/sbin/haproxy,-v)

$(KEEPALIVED):
	$(call deb_tool,keepalived,usr/sbin/keepalived,--version)

venv: $(PY)

$(PY):
	python3 -m venv $(VENV)

# The XDP program of lbd --packet-source afxdp, next to the package (lb/afxdp.py finds it there).
BPF_OBJ := lb/lb_xdp.bpf.o

build: deps $(STAMP) $(BPF_OBJ)

$(BPF_OBJ): native/bpf/lb_xdp.bpf.c
	clang -O2 -g -target bpf -Wall -Werror -I/usr/include/$$(gcc -dumpmachine) -c $< -o $@

$(STAMP): $(PY) $(BUILD_INPUTS)
	$(PIP) install $(EDITABLE) '.[test]'
	@ls lb/_fastpath*.so >/dev/null 2>&1 || { echo "build: lb/_fastpath*.so missing after install" >&2; exit 1; }
	@ls lb/_ipvs_preload*.so >/dev/null 2>&1 || { echo "build: lb/_ipvs_preload*.so missing after install" >&2; exit 1; }
	@touch $@

# pytest exit status 5 means "no tests collected": not a failure here.
define run_pytest
	@echo "== pytest $(1)"; \
	$(PYTEST) $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "(no tests in $(1))"; rc=0; fi; \
	exit $$rc
endef

test: build $(TOOLS)
	@$(MAKE) --no-print-directory lint
	$(call run_pytest,tests/unit)
	$(call run_pytest,tests/dist)
	@$(MAKE) --no-print-directory test-sanitize
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(CI_FUZZ_SECONDS)
	$(call run_pytest,tests/netns)
	@$(MAKE) --no-print-directory test-netns-iptables
	@$(MAKE) --no-print-directory test-netns-afxdp
	@$(MAKE) --no-print-directory test-kernel

# A bounded fuzz session on every `make test` (issue 8: CI fuzzes for minutes).
CI_FUZZ_SECONDS ?= 120

# Static checks of lb/, bench/ and tests/ (configured in pyproject.toml: [tool.ruff], [tool.mypy]).
lint: build
	$(PY) -m ruff check lb bench tests
	$(PY) -m mypy

# TESTS= runs those files instead of the whole directory: make test-netns TESTS=tests/netns/test_dr.py
test-unit: build $(TOOLS)
	$(call run_pytest,$(or $(TESTS),tests/unit))

test-netns: build $(TOOLS)
	$(call run_pytest,$(or $(TESTS),tests/netns))

# The whole netns suite again with `lbd --steering iptables` (raw-table rules and ip sets, before
# routing), the other steering lbd supports: tests/netns run against lbd's default, its own nftables
# table at the input hook (docs/firewall.md); tests about one layer only skip under the other.
# LB_TEST_STEERING=nftables LB_TEST_STEER_HOOK=prerouting make test-netns: the third placement.
test-netns-iptables: export LB_TEST_STEERING = iptables
test-netns-iptables: build $(TOOLS)
	$(call run_pytest,$(or $(TESTS),tests/netns))

# ---- issue 19 item 2: the packet-path modules of tests/netns again on the AF_XDP source (lbd
# --packet-source afxdp, docs/afxdp.md "Tests against both sources"); the whole suite under afxdp:
# LB_TEST_PACKET_SOURCE=afxdp make test-netns. 62 passed + 49 precise skips in ~7 min here (2 shared cores, loaded).
NETNS_AFXDP_TESTS := $(addprefix tests/netns/test_,$(addsuffix .py,dr tunnel tunnel_churn fullnat nat \
	nat_portless port_zero synproxy firewall reload restart hostile_packets proxy_protocol fragments doctor fwmark))
test-netns-afxdp: export LB_TEST_PACKET_SOURCE = afxdp
test-netns-afxdp: build $(TOOLS)
	$(call run_pytest,$(or $(TESTS),$(NETNS_AFXDP_TESTS)))
# ---- end issue 19 item 2

# The sdist, a wheel built from it, installed into a throwaway venv; `make install` into a DESTDIR.
test-dist: build
	$(call run_pytest,tests/dist)

# ---------------------------------------------------------------- kernel IPVS conformance
# tests/kernel boots Debian's 6.1 kernel under qemu (this host's kernel has no ip_vs) and
# compares kernel IPVS with lbd there (tests/kernel/README.md; ~4-5 minutes). kernel-deps
# installs what the guest needs: Debian packages, virtme-ng (the `kernel` extra), and the
# kernel package itself, unpacked into ~/.cache/lvs-userspace-guest (all idempotent).
GUEST_DEB_PKGS := qemu-system-x86 busybox-static kmod udev file ipvsadm
KERNEL_STAMP := $(VENV)/.lvs-userspace-kernel-extra

$(KERNEL_STAMP): $(STAMP) pyproject.toml
	$(PIP) install $(EDITABLE) '.[test,kernel]'
	@touch $@

kernel-deps: build $(KERNEL_STAMP)
	$(call apt_install,$(GUEST_DEB_PKGS))
	$(PY) -m lb.testbed.guest prepare-kernel

test-kernel: kernel-deps
	$(call run_pytest,tests/kernel)

# ---------------------------------------------------------------- C core without Python
# native/tests/harness.c drives the packet core directly (replay, churn); nfq.c is the
# NFQUEUE adapter (libnetfilter_queue), natrx.c the NAT-reply one, xsk.c and xsk_fp.c the AF_XDP one
# (libbpf, libxdp): not part of the core.
CORE_SRCS := $(filter-out native/src/nfq.c native/src/natrx.c native/src/xsk.c native/src/xsk_fp.c,$(wildcard native/src/*.c))
HARNESS_DEPS := native/tests/harness.c $(CORE_SRCS) $(wildcard native/include/*.h native/src/*.h)
SAN_DIR := build/sanitize
SAN_BIN := $(SAN_DIR)/harness
VG_BIN := $(SAN_DIR)/harness-valgrind
FUZZ_BIN := $(SAN_DIR)/fuzz-harness
FUZZ_SECONDS ?= 60
CORPUS := native/tests/corpus
# ASan replaces malloc, so MALLOC_PERTURB_ does not reach it: it fills new blocks with the same byte.
ASAN_OPTS := abort_on_error=1:detect_leaks=1:malloc_fill_byte=165:max_malloc_fill_size=1048576
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined
CFLAGS_CHECK := -std=gnu11 -O1 -g -Wall -Wextra -Werror -Inative/include

$(SAN_BIN): $(HARNESS_DEPS)
	@mkdir -p $(SAN_DIR)
	gcc $(CFLAGS_CHECK) $(SAN_FLAGS) -o $@ native/tests/harness.c $(CORE_SRCS) -lpthread

# valgrind cannot run ASan binaries: a plain build for memcheck.
$(VG_BIN): $(HARNESS_DEPS)
	@mkdir -p $(SAN_DIR)
	gcc $(CFLAGS_CHECK) -o $@ native/tests/harness.c $(CORE_SRCS) -lpthread

# The preload library's wire code (native/preload/lbipvs_wire.c: lbd's answers, the tool's
# arguments): native/tests/preload_harness.c checks fixed cases and replays its corpus.
PRELOAD_WIRE := native/preload/lbipvs_wire.c
PRELOAD_DEPS := native/tests/preload_harness.c $(PRELOAD_WIRE) native/preload/lbipvs_wire.h
PRELOAD_SAN_BIN := $(SAN_DIR)/preload-harness
PRELOAD_VG_BIN := $(SAN_DIR)/preload-harness-valgrind
PRELOAD_FUZZ_BIN := $(SAN_DIR)/fuzz-preload
PRELOAD_CORPUS := native/tests/corpus_preload
PRELOAD_FUZZ_SECONDS ?= $(FUZZ_SECONDS)

$(PRELOAD_SAN_BIN): $(PRELOAD_DEPS)
	@mkdir -p $(SAN_DIR)
	gcc $(CFLAGS_CHECK) $(SAN_FLAGS) -o $@ native/tests/preload_harness.c $(PRELOAD_WIRE)

$(PRELOAD_VG_BIN): $(PRELOAD_DEPS)
	@mkdir -p $(SAN_DIR)
	gcc $(CFLAGS_CHECK) -o $@ native/tests/preload_harness.c $(PRELOAD_WIRE)

# ASan + UBSan (any report aborts), allocations poisoned by glibc (MALLOC_PERTURB_),
# then valgrind memcheck for reads of uninitialised memory (the seed-000 bug class).
test-sanitize: deps $(SAN_BIN) $(VG_BIN) $(PRELOAD_SAN_BIN) $(PRELOAD_VG_BIN)
	@echo "== sanitize: preload library wire code under ASan/UBSan, then valgrind"
	ASAN_OPTIONS=$(ASAN_OPTS) UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 MALLOC_PERTURB_=165 \
	  $(PRELOAD_SAN_BIN) check
	ASAN_OPTIONS=$(ASAN_OPTS) UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(PRELOAD_SAN_BIN) replay $(PRELOAD_CORPUS)/*
	MALLOC_PERTURB_=165 valgrind -q --error-exitcode=9 --track-origins=yes --leak-check=full \
	  --errors-for-leak-kinds=definite $(PRELOAD_VG_BIN) check
	valgrind -q --error-exitcode=9 --track-origins=yes $(PRELOAD_VG_BIN) replay $(PRELOAD_CORPUS)/*
	@echo "== sanitize: churn + replay under ASan/UBSan, MALLOC_PERTURB_=165"
	ASAN_OPTIONS=$(ASAN_OPTS) UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  MALLOC_PERTURB_=165 $(SAN_BIN) churn 2000
	ASAN_OPTIONS=$(ASAN_OPTS) UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(SAN_BIN) replay $(CORPUS)/*
	@echo "== sanitize: churn under valgrind memcheck"
	MALLOC_PERTURB_=165 valgrind -q --error-exitcode=9 --track-origins=yes --leak-check=full \
	  --errors-for-leak-kinds=definite $(VG_BIN) churn 300
	valgrind -q --error-exitcode=9 --track-origins=yes $(VG_BIN) replay $(CORPUS)/*

# libFuzzer on a scratch copy of the corpus (the checked-in corpus stays as it is);
# a crash, sanitizer report or invariant abort fails the target and leaves crash-* files.
fuzz: deps $(HARNESS_DEPS) $(PRELOAD_DEPS)
	@mkdir -p $(SAN_DIR)
	clang -std=gnu11 -O1 -g -DLB_FUZZ -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -Inative/include -o $(FUZZ_BIN) native/tests/harness.c $(CORE_SRCS) -lpthread
	rm -rf $(SAN_DIR)/fuzz-corpus $(SAN_DIR)/fuzz-artifacts
	mkdir -p $(SAN_DIR)/fuzz-corpus $(SAN_DIR)/fuzz-artifacts
	cp $(CORPUS)/* $(SAN_DIR)/fuzz-corpus/
	$(FUZZ_BIN) -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=1024 \
	  -print_final_stats=1 -artifact_prefix=$(SAN_DIR)/fuzz-artifacts/ $(SAN_DIR)/fuzz-corpus
	@echo "fuzz: no crash in $(FUZZ_SECONDS) s (new inputs kept in $(SAN_DIR)/fuzz-corpus)"
	@echo "== fuzz: the preload library's wire code (lbd's answers, the tool's arguments)"
	clang -std=gnu11 -O1 -g -DLB_FUZZ -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -Wall -Wextra -Werror -o $(PRELOAD_FUZZ_BIN) native/tests/preload_harness.c $(PRELOAD_WIRE)
	rm -rf $(SAN_DIR)/fuzz-preload-corpus && mkdir -p $(SAN_DIR)/fuzz-preload-corpus
	cp $(PRELOAD_CORPUS)/* $(SAN_DIR)/fuzz-preload-corpus/
	$(PRELOAD_FUZZ_BIN) -max_total_time=$(PRELOAD_FUZZ_SECONDS) -timeout=10 -rss_limit_mb=1024 \
	  -print_final_stats=1 -artifact_prefix=$(SAN_DIR)/fuzz-artifacts/ $(SAN_DIR)/fuzz-preload-corpus
	@echo "fuzz: preload wire code, no crash in $(PRELOAD_FUZZ_SECONDS) s"

demo: build
	$(PY) -m lb.testbed.demo

# ---------------------------------------------------------------- make install / uninstall
# lbd and lbadm in a venv of their own (Debian's Python is externally managed, PEP 668), built
# from this tree's wheel with Debian's /usr/bin/python3, linked into SBINDIR; man pages, bash
# completion, the systemd units (ExecStart = SBINDIR/lbd) and the example configurations where a
# Debian admin looks for them. DESTDIR stages everything (the venv's scripts are rewritten to run
# from their final place). `make uninstall` (same PREFIX/DESTDIR) removes exactly these files.
PREFIX      ?= /usr/local
SBINDIR     ?= $(PREFIX)/sbin
LIBDIR      ?= $(PREFIX)/lib/lvs-userspace
MANDIR      ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
UNITDIR     ?= $(PREFIX)/lib/systemd/system
DOCDIR      ?= $(PREFIX)/share/doc/lvs-userspace
INSTALL_PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
WHEEL_DIR   := build/wheel
# What building the wheel and running lbd need (a subset of DEB_PKGS).
INSTALL_DEB_PKGS := python3-venv python3-dev gcc libnetfilter-queue-dev libmnl-dev iptables ipset iproute2 linux-libc-dev \
                    nftables
INSTALLED_FILES := $(SBINDIR)/lbd $(SBINDIR)/lbadm $(SBINDIR)/lbd-exec $(MANDIR)/man8/lbd.8 $(MANDIR)/man8/lbadm.8 \
                   $(BASHCOMPDIR)/lbd $(BASHCOMPDIR)/lbadm $(UNITDIR)/lbd.service $(UNITDIR)/lbd@.service

install-deps:
	$(call apt_install,$(INSTALL_DEB_PKGS))

install: install-deps $(PY)
	rm -rf $(WHEEL_DIR)
	$(PIP) wheel --no-deps --wheel-dir $(WHEEL_DIR) .
	$(INSTALL_PYTHON) -m venv --clear $(DESTDIR)$(LIBDIR)
	$(DESTDIR)$(LIBDIR)/bin/python -m pip install --quiet --no-warn-script-location $(if $(DESTDIR),--no-compile) \
	  $(WHEEL_DIR)/lvs_userspace-*.whl
	@# Staged: scripts, activate files and pyvenv.cfg name the final place, bytecode its final paths.
	@if [ -n "$(DESTDIR)" ]; then \
	  grep -rlF "$(DESTDIR)$(LIBDIR)" $(DESTDIR)$(LIBDIR)/bin $(DESTDIR)$(LIBDIR)/pyvenv.cfg \
	    | xargs -r sed -i "s|$(DESTDIR)$(LIBDIR)|$(LIBDIR)|g"; \
	  $(DESTDIR)$(LIBDIR)/bin/python -m compileall -q -f -s $(DESTDIR) $(DESTDIR)$(LIBDIR)/lib >/dev/null; \
	fi
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(UNITDIR) \
	  $(DESTDIR)$(DOCDIR)/examples
	ln -sfn $(LIBDIR)/bin/lbd $(DESTDIR)$(SBINDIR)/lbd
	ln -sfn $(LIBDIR)/bin/lbadm $(DESTDIR)$(SBINDIR)/lbadm
	ln -sfn $(LIBDIR)/bin/lbd-exec $(DESTDIR)$(SBINDIR)/lbd-exec
	install -m 644 man/lbd.8 man/lbadm.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 644 completion/lbd.bash $(DESTDIR)$(BASHCOMPDIR)/lbd
	install -m 644 completion/lbadm.bash $(DESTDIR)$(BASHCOMPDIR)/lbadm
	for unit in lbd.service lbd@.service; do \
	  sed 's|@SBINDIR@|$(SBINDIR)|g' systemd/$$unit > $(DESTDIR)$(UNITDIR)/$$unit && chmod 644 $(DESTDIR)$(UNITDIR)/$$unit; \
	done
	install -m 644 configs/*.toml configs/keepalived.conf $(DESTDIR)$(DOCDIR)/examples/
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed: $(SBINDIR)/lbd, $(SBINDIR)/lbadm, $(SBINDIR)/lbd-exec (venv $(LIBDIR), with the IPVS preload library), man pages in $(MANDIR)/man8,"
	@echo "  bash completion in $(BASHCOMPDIR), units lbd.service and lbd@.service in $(UNITDIR),"
	@echo "  example configurations in $(DOCDIR)/examples (systemctl enable --now lbd; lbd(8))"

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED_FILES))
	rm -rf $(DESTDIR)$(DOCDIR)
	@# The venv only if it is ours: a venv holding lvs-userspace.
	@if [ -f $(DESTDIR)$(LIBDIR)/pyvenv.cfg ] && ls -d $(DESTDIR)$(LIBDIR)/lib/python3*/site-packages/lvs_userspace-*.dist-info >/dev/null 2>&1; then \
	  echo "rm -rf $(DESTDIR)$(LIBDIR)"; rm -rf $(DESTDIR)$(LIBDIR); \
	elif [ -e $(DESTDIR)$(LIBDIR) ]; then echo "uninstall: $(DESTDIR)$(LIBDIR) is not lvs-userspace's venv; left alone" >&2; fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# Benchmarks (bench/README.md): BENCH_ARGS is passed through, e.g. BENCH_ARGS="--out DIR".
BENCH_STAMP := $(VENV)/.lvs-userspace-bench-extra

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PIP) install $(EDITABLE) '.[test,bench]'
	@touch $@

bench: build $(BENCH_STAMP) bench-tools
	$(PY) -m bench all $(BENCH_ARGS)

bench-quick: build $(BENCH_STAMP) bench-tools
	$(PY) -m bench all --quick $(BENCH_ARGS)

# --- bench helpers: bench/native/*.c (the packet generator, the HTTP real server) ---
# The project's warning flags; bench/common.py's build_tool() builds the same way on first use,
# tests/unit/test_bench_pktgen.py builds pktgen under ASan/UBSan.
.PHONY: bench-tools
BENCH_TOOLS := bench/.build/pktgen bench/.build/httpd
bench-tools: $(BENCH_TOOLS)
bench/.build/%: bench/native/%.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -Werror -o $@ $<
# --- end of bench helpers ---

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache $(STAMP) $(BENCH_STAMP) $(KERNEL_STAMP)
	rm -f lb/_fastpath*.so lb/_fastpath*.c lb/_fastpath*.o $(BPF_OBJ)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
