# The two commands of README: `make test` and `make demo`. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check singleshot tests
	$(BIN)/ruff format --check singleshot tests
	$(BIN)/python -m pytest -q -n 2

demo: $(STAMP)
	$(BIN)/singleshot demo --out runs/demo

bench: $(STAMP)
	$(BIN)/singleshot bench

lint: $(STAMP)
	$(BIN)/ruff check singleshot tests
	$(BIN)/ruff format --check singleshot tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache runs
