# lvs-userspace: build, test and demo. Run as root on Debian 12 (or similar).
#   make demo   - builds everything, runs the DR demo in its own network namespaces
#   make test   - builds everything, runs the linters (lint: ruff, mypy), tests/unit, the C core
#                 under ASan/UBSan and valgrind (test-sanitize), then tests/netns
#   make fuzz   - libFuzzer run of the packet core (FUZZ_SECONDS, default 60)
#   make bench  - the benchmark suite (bench/README.md; ~14 min), bench-quick a smoke run
# Every target is idempotent.

SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
PYTEST  := $(PY) -m pytest
STAMP   := $(VENV)/.lvs-userspace-installed

# System packages: build (venv, headers, compiler, libnetfilter_queue, libmnl),
# runtime (iptables, iproute2) and tools for tests/benchmarks.
DEB_PKGS := python3-venv python3-dev gcc make iptables iproute2 \
            libnetfilter-queue-dev libmnl-dev tcpdump netsniff-ng ebtables wrk valgrind clang

# Inputs of the editable install (the cffi extension is compiled from native/).
BUILD_INPUTS := pyproject.toml setup.py $(wildcard native/build_ffi.py native/include/*.h native/src/*.c)

.PHONY: all deps venv build lint test test-unit test-sanitize test-netns fuzz demo bench bench-quick clean distclean

all: build

# Installs only what is missing; `apt-get update` only when a missing package
# has no candidate in the local package lists (or the install fails on stale lists).
deps:
	@missing=""; \
	for p in $(DEB_PKGS); do \
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
	if [ $$need_update = 1 ]; then apt-get update -q; fi; \
	apt-get install -y -q --no-install-recommends $$missing || \
	  { apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; }

venv: $(PY)

$(PY):
	python3 -m venv $(VENV)

build: deps $(STAMP)

$(STAMP): $(PY) $(BUILD_INPUTS)
	$(PIP) install -e '.[test]'
	@ls lb/_fastpath*.so >/dev/null 2>&1 || { echo "build: lb/_fastpath*.so missing after install" >&2; exit 1; }
	@touch $@

# pytest exit status 5 means "no tests collected": not a failure here.
define run_pytest
	@echo "== pytest $(1)"; \
	$(PYTEST) $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "(no tests in $(1))"; rc=0; fi; \
	exit $$rc
endef

test: build
	@$(MAKE) --no-print-directory lint
	$(call run_pytest,tests/unit)
	@$(MAKE) --no-print-directory test-sanitize
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(CI_FUZZ_SECONDS)
	$(call run_pytest,tests/netns)

# A bounded fuzz session on every `make test` (issue 8: CI fuzzes for minutes).
CI_FUZZ_SECONDS ?= 120

# Static checks of lb/, bench/ and tests/ (configured in pyproject.toml: [tool.ruff], [tool.mypy]).
lint: build
	$(PY) -m ruff check lb bench tests
	$(PY) -m mypy

test-unit: build
	$(call run_pytest,tests/unit)

test-netns: build
	$(call run_pytest,tests/netns)

# ---------------------------------------------------------------- C core without Python
# native/tests/harness.c drives the packet core directly (replay, churn); nfq.c is the
# NFQUEUE adapter (libnetfilter_queue), not part of the core.
CORE_SRCS := $(filter-out native/src/nfq.c,$(wildcard native/src/*.c))
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

# ASan + UBSan (any report aborts), allocations poisoned by glibc (MALLOC_PERTURB_),
# then valgrind memcheck for reads of uninitialised memory (the seed-000 bug class).
test-sanitize: deps $(SAN_BIN) $(VG_BIN)
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
fuzz: deps $(HARNESS_DEPS)
	@mkdir -p $(SAN_DIR)
	clang -std=gnu11 -O1 -g -DLB_FUZZ -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -Inative/include -o $(FUZZ_BIN) native/tests/harness.c $(CORE_SRCS) -lpthread
	rm -rf $(SAN_DIR)/fuzz-corpus $(SAN_DIR)/fuzz-artifacts
	mkdir -p $(SAN_DIR)/fuzz-corpus $(SAN_DIR)/fuzz-artifacts
	cp $(CORPUS)/* $(SAN_DIR)/fuzz-corpus/
	$(FUZZ_BIN) -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=1024 \
	  -print_final_stats=1 -artifact_prefix=$(SAN_DIR)/fuzz-artifacts/ $(SAN_DIR)/fuzz-corpus
	@echo "fuzz: no crash in $(FUZZ_SECONDS) s (new inputs kept in $(SAN_DIR)/fuzz-corpus)"

demo: build
	$(PY) -m lb.demo

# Benchmarks (bench/README.md): BENCH_ARGS is passed through, e.g. BENCH_ARGS="--out DIR".
BENCH_STAMP := $(VENV)/.lvs-userspace-bench-extra

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PIP) install -e '.[test,bench]'
	@touch $@

bench: build $(BENCH_STAMP)
	$(PY) -m bench all $(BENCH_ARGS)

bench-quick: build $(BENCH_STAMP)
	$(PY) -m bench all --quick $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache $(STAMP) $(BENCH_STAMP)
	rm -f lb/_fastpath*.so lb/_fastpath*.c lb/_fastpath*.o
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
