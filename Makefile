# The two commands a newcomer runs: `make demo` and `make test`.
# Each creates .venv with the tested versions (constraints.txt) the first time.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

$(BIN)/.sdrt-installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

.PHONY: install demo test
install: $(BIN)/.sdrt-installed

demo: install
	$(BIN)/sdrt demo

test: install
	$(BIN)/python -m pytest -q
