# Everything a newcomer needs: `make demo` and `make test` each set up .venv from scratch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow bench docs lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml $(BIN)/activate
	$(BIN)/pip install --quiet -e ".[test,plots]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m ngvi demo --out demo-output

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m slow

lint: $(VENV)/.installed
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check ngvi tests examples benchmarks

clean:
	rm -rf $(VENV) demo-output site
