# Everything a newcomer needs on a fresh Debian machine: `make run`, `make test`.
# Each target installs what it needs (apt packages, venvs) and is idempotent.

SHELL := /bin/bash
# The first interpreter that really runs and is >= 3.11 (pyenv shims may exist without resolving).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { command -v $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
# helm-sdkpy needs Python >= 3.12; it lives in its own venv, used by the chart tests.
HELM_PYTHON ?= $(shell ls -d $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python 2>/dev/null | tail -n1 || command -v python3.12)
HELM_VENV := .venv-helm
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := nginx-light haproxy openssl prometheus
# The servers the tests start; `command -v` keeps repeated runs from touching apt.
APT_PROGRAMS := nginx haproxy openssl prometheus promtool

.PHONY: run test lint unit bench system-deps venv helm-venv clean

run: venv system-deps
	$(BIN)/python -m exporter.demo run --state-dir .demo -- $(BIN)/sni-exporter serve --config.file targets.yaml $(ARGS)

test: venv helm-venv system-deps lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check exporter tests bench
	$(BIN)/ruff format --check exporter tests bench
	$(BIN)/mypy

bench: venv system-deps
	$(MAKE) -C bench

system-deps:
	@missing=""; for p in $(APT_PROGRAMS); do command -v $$p >/dev/null || [ -x /usr/sbin/$$p ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing $(APT_PACKAGES) with apt-get"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi
	@for p in $(APT_PROGRAMS); do command -v $$p >/dev/null || [ -x /usr/sbin/$$p ] || { echo "error: $$p is still missing after apt-get install" >&2; exit 1; }; done

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: no python3 >= 3.11 found" >&2; exit 1; }
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: $(PYTHON) is older than 3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

helm-venv: $(HELM_VENV)/.installed
$(HELM_VENV)/.installed:
	@test -x "$(HELM_PYTHON)" || { echo "error: Python 3.12 not found (helm-sdkpy needs it); set HELM_PYTHON" >&2; exit 1; }
	$(HELM_PYTHON) -m venv $(HELM_VENV)
	$(HELM_VENV)/bin/pip install -q --upgrade pip
	$(HELM_VENV)/bin/pip install -q helm-sdkpy pyyaml jsonschema
	touch $@

clean:
	rm -rf $(VENV) $(HELM_VENV) .mypy_cache .pytest_cache .ruff_cache
