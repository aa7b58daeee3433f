# The one entry point: every target creates and uses .venv itself (no manual pip step).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := .tools
SAMPLE_DIR ?= sample-data
WORKDIR ?= work
N ?= 1000000
SEEDS ?= 1 2 3 4 5

.PHONY: install run test bench evaluate reliability browser nodetools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[sagemaker,test]'
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium renders report.html in the browser tests (no browser download at test time).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# npm test tools (the Step Functions definition validator), installed into .tools/.
nodetools: $(TOOLS)/node_modules/.bin/statelint
$(TOOLS)/node_modules/.bin/statelint:
	mkdir -p $(TOOLS) && cd $(TOOLS) && npm install --silent --no-audit --no-fund --prefix . @wmfs/statelint >/dev/null

run: $(STAMP)
	$(BIN)/auditsift sample --out $(SAMPLE_DIR) --days 4 --seed 7
	$(BIN)/auditsift run --input $(SAMPLE_DIR) --workdir $(WORKDIR)

test: $(STAMP) browser nodetools
	$(BIN)/python -m pytest -n 2 tests

bench: $(STAMP)
	$(BIN)/python -m pipeline.bench --events $(N) --out bench-out

evaluate: $(STAMP)
	$(BIN)/python -m pipeline.evaluate --seeds $(SEEDS) --backend iforest rcf-local --out evaluation.json

reliability: $(STAMP)
	$(BIN)/python scripts/reliability.py

clean:
	rm -rf $(VENV) $(TOOLS) $(SAMPLE_DIR) $(WORKDIR) bench-out .pytest_cache build *.egg-info
