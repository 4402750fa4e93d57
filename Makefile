# The commands behind the README. Everything installs itself: Debian packages with apt-get (run as
# root), Python packages into .venv. `make run` and `make test` are the two set-up commands.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages: python3-venv for the virtual environment on a stock Debian 12; systemd for
# systemd-analyze and systemd-escape, the oracle the value parsers are tested against;
# libnss-systemd so that getent/id/ls see dynamic users; util-linux (setpriv, ipcmk, unshare),
# e2fsprogs (chattr), libcap2-bin (setcap), gcc and libc6-dev (a setuid probe), procps (ps) for
# the sandbox and pool tests; socat, netcat-openbsd, git and python3-systemd are the real clients and
# handlers of the serving tests; curl scrapes the metrics endpoint, and prometheus (with promtool)
# checks what it serves, scrapes it for real and checks the alert rules of deploy/prometheus/.
DEB_RUN := python3 python3-venv
DEB_TEST := $(DEB_RUN) systemd libnss-systemd util-linux e2fsprogs libcap2-bin gcc libc6-dev procps \
	socat netcat-openbsd git python3-systemd curl prometheus

.PHONY: run test lint typecheck unit check deb-run deb-test clean

# Install, then run the main job: serve the bundled example units (an echo service on
# 127.0.0.1:7007, one fresh dynamic user per connection) in the foreground until Ctrl-C.
run: $(BIN)/activator
	$(BIN)/activator check --config examples/activator.toml
	@echo "activator: serving examples/units; try it from another terminal: nc 127.0.0.1 7007"
	$(BIN)/activator serve --config examples/activator.toml

# Install everything the tests need, then lint, type-check and run the whole test suite.
test: deb-test $(BIN)/.test-installed lint typecheck
	$(BIN)/pytest

lint: $(BIN)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.test-installed
	$(BIN)/mypy

# Debian packages, installed only when missing (apt-get update first, as a fresh machine needs).
deb-run:
	@missing=$$(for p in $(DEB_RUN); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

deb-test:
	@missing=$$(for p in $(DEB_TEST); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

$(VENV)/bin/python:
	$(MAKE) deb-run
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(BIN)/activator: $(VENV)/bin/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	@touch $@

$(BIN)/.test-installed: $(VENV)/bin/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist
