# The README's two commands: `make demo` and `make test`. Both set up everything from nothing.
# `make check` is the fast tier a developer runs often: the tests not marked slow.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: install demo test check lint ui benchmarks

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $@

demo: install
	$(BIN)/mmsearch demo
	$(BIN)/mmsearch search --text "red striped t-shirt" --k 5

test: install
	$(BIN)/python -m pytest -q

check: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .

ui: install
	$(BIN)/mmsearch ui
