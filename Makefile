# Two commands on a fresh machine with python3 (>= 3.11) and node:
#   make demo   - synthetic fleet end to end: ingest, train, score, report
#   make test   - the whole test suite (Azurite included)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite
DEMO_DIR ?= demo-output

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[azure,functions,test]'
	touch $(STAMP)

$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(AZURITE)

demo: $(STAMP)
	$(BIN)/fleetscore demo --dir $(DEMO_DIR)

test: $(STAMP) $(AZURITE)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) node_modules $(DEMO_DIR) .pytest_cache
