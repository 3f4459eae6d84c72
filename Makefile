# Quick start: `make run` serves the console, `make test` runs the tests.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint upgrade bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.installed $@

# Byte-compiled up front: where PYTHONDONTWRITEBYTECODE is set, every start would
# otherwise compile the whole package again (and `cds serve` starts Python twice).
run: $(VENV)/.installed
	@$(BIN)/python -m compileall -q app.py cds migrations >/dev/null
	$(BIN)/flask --app app cds serve

upgrade: $(VENV)/.installed
	$(BIN)/flask --app app cds upgrade

# pytest exits 5 when it collects nothing; that is not a failure of the code.
test: $(VENV)/.installed-dev
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	 if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The rules are in ruff.toml.
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

bench: $(VENV)/.installed-dev
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
