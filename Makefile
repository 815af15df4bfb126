# Berth: `make demo` sets up and shows the main job; `make test` sets up and runs every check.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint unit e2e bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q 'torch==2.13.0'
	$(PY) -m pip install -q -e '.[serve,pytorch,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) demo/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest -q -rsfE -p no:cacheprovider -n 2 --dist loadfile

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

bench: $(STAMP)
	$(PY) bench/scheduler.py

clean:
	rm -rf $(VENV) .berth build dist src/*.egg-info
