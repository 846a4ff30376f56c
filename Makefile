# lvs-userspace: build, test and demo. Run as root on Debian 12 (or similar).
#   make demo   - builds everything, runs the DR demo in its own network namespaces
#   make test   - builds everything, runs tests/unit then tests/netns
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
            libnetfilter-queue-dev libmnl-dev tcpdump netsniff-ng ebtables wrk valgrind

# Inputs of the editable install (the cffi extension is compiled from native/).
BUILD_INPUTS := pyproject.toml setup.py $(wildcard native/build_ffi.py native/include/*.h native/src/*.c)

.PHONY: all deps venv build test test-unit test-netns demo clean distclean

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
	$(call run_pytest,tests/unit)
	$(call run_pytest,tests/netns)

test-unit: build
	$(call run_pytest,tests/unit)

test-netns: build
	$(call run_pytest,tests/netns)

demo: build
	$(PY) -m lb.demo

clean:
	rm -rf build *.egg-info .pytest_cache .hypothesis $(STAMP)
	rm -f lb/_fastpath*.so lb/_fastpath*.c lb/_fastpath*.o
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
