# The one entry point: every target creates and uses .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE_DIR ?= sample-data
WORKDIR ?= work
N ?= 1000000

.PHONY: install run test bench reliability clean lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[sagemaker,test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/auditsift sample --out $(SAMPLE_DIR) --days 4 --seed 7
	$(BIN)/auditsift run --input $(SAMPLE_DIR) --workdir $(WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

clean:
	rm -rf $(VENV) $(SAMPLE_DIR) $(WORKDIR) .pytest_cache build *.egg-info
