# The one entry point: every target creates and uses .venv itself (no manual pip step).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := .tools
SAMPLE_DIR ?= sample-data
WORKDIR ?= work
BENCH_SIZES ?= 250000 1000000
SEEDS ?= 1 2 3 4 5

.PHONY: install run runbook test bench bench-full evaluate reliability fuzz compiler browser nodetools clean

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

# docs/runbook.md's worked example from the sample run (tools/runbook.py; tests/tools/test_runbook.py keeps them equal).
runbook: run
	$(BIN)/python -m tools.runbook --workdir $(WORKDIR) --write

# ruff first (pyproject [tool.ruff]: pyflakes, syntax errors, import order), then the suite, which also enforces
# the layering (tests/test_architecture.py).
test: $(STAMP) browser nodetools
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 tests

# Developer tools (tools/, not in the wheel) run from the checkout as python -m tools.X.
# The whole daily run at 0.25M and 1M events against the floor, the naive version (0.25M only) and DuckDB; bench-full
# adds 4M events and the issue's profiles: a busy day (3.6M events in its peak hour) and identity sprays of 75k, 150k
# and 300k identities in an hour. How they measure, and the latest figures: docs/performance.md.
bench: $(STAMP)
	$(BIN)/python -m tools.bench --sizes $(BENCH_SIZES) --naive-max 300000 --out bench-out

bench-full: $(STAMP)
	$(BIN)/python -m tools.bench --sizes 250000 1000000 4000000 --busy-day 3600000 --spray 75000 150000 300000 \
		--naive-max 300000 --out bench-out-full

evaluate: $(STAMP)
	$(BIN)/python -m tools.evaluate --seeds $(SEEDS) --backend iforest rcf-local --out evaluation.json

reliability: $(STAMP)
	$(BIN)/python -m tools.reliability

# The C decoder (features/_native/fastnorm.c with yyjson) built with AddressSanitizer and UndefinedBehaviorSanitizer,
# then FUZZ_LINES seeded mutations of realistic audit lines decoded by it and by msgspec: same archived rows, same
# quarantine, every Arrow array valid (tests/features/native_fuzz.py; the suite runs 4,500 against the normal build).
FUZZ_LINES ?= 200000
SANITIZED := build/sanitized/_fastnorm.so
fuzz: $(STAMP)
	mkdir -p $(dir $(SANITIZED))
	cc -shared -fPIC -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
		-DYYJSON_DISABLE_WRITER=1 -DYYJSON_DISABLE_UTILS=1 -Ifeatures/_native \
		-I$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])') \
		features/_native/fastnorm.c features/_native/yyjson.c -o $(SANITIZED)
	ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$$(cc -print-file-name=libasan.so) $$(cc -print-file-name=libubsan.so)" \
		$(BIN)/python -m tests.features.native_fuzz --module $(SANITIZED) --count $(FUZZ_LINES)

clean:
	rm -rf $(VENV) $(TOOLS) $(SAMPLE_DIR) $(WORKDIR) bench-out bench-out-full .pytest_cache build *.egg-info features/_fastnorm*.so
