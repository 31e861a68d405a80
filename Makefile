# Two entry points for a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Both install what they need. The venv sees Debian's python3-* packages (the same
# ones the .deb depends on), so tests run against the runtime users actually get.
SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PY := /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
export MIPART_CACHE ?= $(HOME)/.cache/mipart-tests
APT_PKGS := python3 python3-venv python3-pip python3-yaml python3-click python3-aiohttp \
	python3-structlog python3-jeepney python3-sdnotify nginx dbus-daemon \
	systemd-container debootstrap dpkg-dev curl procps iproute2 lintian reprepro gnupg python3-matplotlib
PYTEST_ARGS ?=
TOOLS := $(abspath $(VENV))/tools
TEST_ENV := PATH=$(TOOLS):$$PATH

.PHONY: deps demo test test-fast test-system test-vllm test-ansible collection lint perf constraints clean

$(VENV)/.deps-stamp: pyproject.toml constraints.txt Makefile
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PKGS) >/dev/null
	$(PY) -m venv --system-site-packages $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	@# promtool checks the alert rules. Only the tool is unpacked from Debian's prometheus
	@# package, so no Prometheus server is installed or started on the developer's host.
	mkdir -p $(TOOLS) && cd $(TOOLS) && rm -f prometheus_*.deb && apt-get download -qq prometheus 2>/dev/null \
	  && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool > promtool && chmod 755 promtool && rm -f prometheus_*.deb
	touch $@

deps: $(VENV)/.deps-stamp

demo: deps
	$(BIN)/python -m mipart.sim.demo

# The system tier fails (rather than skips) where systemd-nspawn cannot run: CI proves it.
test: lint
	$(TEST_ENV) MIPART_REQUIRE_SYSTEM=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: deps
	$(TEST_ENV) $(BIN)/python -m pytest -m 'not system and not vllm and not ansible' $(PYTEST_ARGS)

test-system: deps
	$(TEST_ENV) $(BIN)/python -m pytest -m system $(PYTEST_ARGS)

test-vllm: deps
	$(TEST_ENV) $(BIN)/python -m pytest -m vllm $(PYTEST_ARGS)

# The Ansible collection: ansible-lint (production), ansible-test sanity, the build, the modules on localhost.
test-ansible: deps
	$(TEST_ENV) $(BIN)/python -m pytest -m ansible $(PYTEST_ARGS)

# The Ansible collection's artifact (docs/fleet.md), with the pinned ansible-core of tests/ansible/requirements.txt.
collection:
	rm -rf build/collection-venv && $(PY) -m venv build/collection-venv
	build/collection-venv/bin/pip install -q "$$(grep '^ansible-core==' tests/ansible/requirements.txt)"
	build/collection-venv/bin/ansible-galaxy collection build ansible_collections/mipart/host --output-path out --force

# The checks of style and types (ruff on the whole tree, mypy strict on the seams' packages):
# `make test` runs them first.
lint: deps
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

perf: deps
	for b in perf/bench_*.py; do $(BIN)/python $$b || exit 1; done

# Pins of the test-only tools, from a fresh venv without pip's cache (commit the result).
constraints:
	rm -rf build/constraints-venv && $(PY) -m venv --system-site-packages build/constraints-venv
	PIP_NO_CACHE_DIR=1 build/constraints-venv/bin/pip install -q -e '.[test]'
	build/constraints-venv/bin/python packaging/freeze-constraints > constraints.txt
	rm -rf build/constraints-venv

include packaging/deb.mk

clean:
	rm -rf $(VENV) out build *.egg-info
