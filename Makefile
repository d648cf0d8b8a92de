# replab: the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install services demo test test-cloud lint sync lock clean

help:
	@echo "make demo   - create .venv, install, run the notebook series on site=local"
	@echo "make test   - create .venv, install, run the whole test suite"
	@echo "make lint   - ruff over lib, tests, bench, examples"
	@echo "make sync   - re-pair every notebook (.py <-> .ipynb) with jupytext"
	@echo "make lock   - regenerate constraints.txt from the installed .venv"

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/replab demo

# The real local services the tests use (Keystone, Swift, rclone, Docker, and the OpenStack
# control plane with Nova, Neutron, Glance, Placement and Blazar): Debian packages and venvs,
# installed once (needs root or sudo; the control plane takes about 5 minutes cold).
# REPLAB_SKIP_SERVICES=1 skips them and the tests that need them.
services:
	@if [ "$$REPLAB_SKIP_SERVICES" = 1 ]; then echo "services skipped (REPLAB_SKIP_SERVICES=1)"; \
	 else bash tests/services/install.sh && bash tests/services/docker.sh install && \
	      bash tests/services/cloud-install.sh; fi

test: install services
	$(BIN)/python -m pytest

# Only the tests against the local OpenStack control plane (tests/services/cloud.py).
test-cloud: install services
	$(BIN)/python -m pytest -m openstack

lint: install
	$(BIN)/ruff check lib tests bench examples

sync: install
	$(BIN)/jupytext --sync [0-9]_*.py

lock: install
	{ echo "# Every package of the tested environment, exact versions (pip freeze of a working install)."; \
	  echo "# requirements.txt applies it with -c; regenerate with: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^replab'; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
