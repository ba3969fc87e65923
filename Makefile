# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use; a stamp file re-installs only when pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench proto clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@echo "make: setting up $(VENV): nbo-edge and its dependencies (once, or when pyproject.toml changes; about a minute) ..."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@echo "make: installing nbo-edge[dev] into $(VENV) ..."
	@$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)
	@echo "make: $(VENV) is ready"

demo: $(STAMP)
	$(VENV)/bin/nbo demo

lint: $(STAMP)
	$(VENV)/bin/ruff check sdk cli gateway model_export console tests examples bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) bench/run_all.py

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
