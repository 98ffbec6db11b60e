# Two commands on a fresh machine with python3 (>= 3.11) and node:
#   make demo   - synthetic fleet end to end: ingest, train, score, report
#   make test   - ruff, mypy (strict on the bottom layers) and the whole test suite (Azurite included)
#   make container-test - only the scoring image, built with podman and run as Batch runs it
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite
DEMO_DIR ?= demo-output

.PHONY: demo test container-test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[azure,functions,test,cli,report]'
	touch $(STAMP)

$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(AZURITE)

demo: $(STAMP)
	$(BIN)/fleetscore demo --dir $(DEMO_DIR)

test: $(STAMP) $(AZURITE)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# podman, runc and debootstrap are installed by the test when missing (root and apt-get);
# the image's base and layers are cached under /var/tmp/fleetscore-container-cache.
container-test: $(STAMP) $(AZURITE)
	$(BIN)/python -m pytest tests/test_container.py -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) node_modules $(DEMO_DIR) .pytest_cache
