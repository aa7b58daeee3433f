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

.PHONY: install run test bench evaluate reliability compiler browser nodetools clean

# setup.py compiles features._fastnorm (the archive's C JSON decoder) into the editable install.
$(STAMP): pyproject.toml setup.py features/_native/fastnorm.c | compiler
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[sagemaker,test]'
	touch $(STAMP)

install: $(STAMP)

# A C compiler for features._fastnorm (Debian's gcc when there is none). Without one the install goes on
# and the archive decodes with msgspec (same rows, slower); the tests say so.
compiler:
	@command -v cc >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null; } \
		|| echo "no C compiler could be installed: features._fastnorm will not be built"

# Debian's Chromium renders report.html in the browser tests (no browser download at test time).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# npm test tools (the Step Functions definition validator), installed into .tools/.
nodetools: $(TOOLS)/node_modules/.bin/statelint
$(TOOLS)/node_modules/.bin/statelint:
	mkdir -p $(TOOLS) && cd $(TOOLS) && npm install --silent --no-audit --no-fund --prefix . @wmfs/statelint >/dev/null

# The sample's dates are fixed by its seed: the run is for the clock its data ends at (labels.json "end"), not today.
run: $(STAMP)
	$(BIN)/auditsift sample --out $(SAMPLE_DIR) --days 4 --seed 7
	$(BIN)/auditsift run --input $(SAMPLE_DIR) --workdir $(WORKDIR) \
		--now $$($(BIN)/python -c 'import sys; from pipeline.sample import sample_clock; print(sample_clock(sys.argv[1]).isoformat())' $(SAMPLE_DIR))

test: $(STAMP) browser nodetools
	$(BIN)/python -m pytest -n 2 tests

bench: $(STAMP)
	$(BIN)/python -m pipeline.bench --events $(N) --out bench-out

evaluate: $(STAMP)
	$(BIN)/python -m pipeline.evaluate --seeds $(SEEDS) --backend iforest rcf-local --out evaluation.json

reliability: $(STAMP)
	$(BIN)/python scripts/reliability.py

clean:
	rm -rf $(VENV) $(TOOLS) $(SAMPLE_DIR) $(WORKDIR) bench-out .pytest_cache build *.egg-info features/_fastnorm*.so
