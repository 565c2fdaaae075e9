# Two commands on a fresh machine (Python 3.11+ and make):
#   make demo   set everything up, then run the whole system with sample jobs (dispatcher up --demo)
#   make test   set everything up, then lint, type-check and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo up test lint bench clean

$(BIN)/dispatcher: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/dispatcher

demo: setup
	$(BIN)/dispatcher up --demo

up: setup
	$(BIN)/dispatcher up

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check dispatcher worker_bridge runner tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
