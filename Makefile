# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv on first use and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch==2.13.0 is the CPU build; on a GPU machine install your own CUDA build
# into .venv first (or run `make TORCH_SPEC=torch`), it is then kept as it is.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench bench-render bench-flower papers papers-quick clean

# First use: pip shows what it collects and installs (not -q: it takes a couple of
# minutes, see README for measured times), then one line when it is done.
$(STAMP): pyproject.toml
	@echo "commsim: creating $(VENV) and installing $(TORCH_SPEC) and the dependencies (first use only)"
	$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null && echo "commsim: torch is already installed in $(VENV), kept" || \
		(echo "commsim: [1/2] installing $(TORCH_SPEC)" && $(BIN)/pip install --progress-bar on "$(TORCH_SPEC)")
	@echo "commsim: [2/2] installing commsim (editable) with its test extra"
	$(BIN)/pip install --progress-bar on -e ".[test]"
	touch $(STAMP)
	@echo "commsim: $(VENV) is ready"

# commsim's own bytecode, compiled when stale (Python would write it on the first run anyway,
# except where PYTHONDONTWRITEBYTECODE is set; then every run would compile ~70 modules, 0.2 s)
demo: $(STAMP)
	@$(BIN)/python -m compileall -q run_sim.py sim algorithms topologies analysis >/dev/null
	$(BIN)/python run_sim.py run scenarios/quickstart.yaml --out results/quickstart/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# The CPU-scale paper reproductions and results/papers/report.md (sim/study/papers.py).
papers: $(STAMP)
	$(BIN)/python run_sim.py papers --workers 2

papers-quick: $(STAMP)
	$(BIN)/python run_sim.py papers --quick --workers 2

# Every benchmark, one after the other (run it on a quiet machine), then docs/performance.md
# regenerated from bench/results/*.json (bench/run_all.py, bench/render.py).  The Flower bench
# runs when $(BENCH_VENV) exists (`make bench-flower` creates it), and is skipped otherwise.
bench: $(STAMP)
	$(BIN)/python bench/run_all.py --flower-python $(BENCH_BIN)/python

bench-render: $(STAMP)
	$(BIN)/python bench/render.py

# Flower head to head (issue 15, bench/bench_flower.py -> bench/results/flower.json).  Flower's
# simulation extra pins its own ray, older than the one the test extra brings into .venv, so the
# bench runs from a venv of its own, BENCH_VENV, created on first use with $(TORCH_SPEC) and
# commsim's `bench` extra (flwr[simulation]); `make bench-flower BENCH_VENV=path` reuses another.
# Options go in BENCH_FLOWER_ARGS, e.g. `make bench-flower BENCH_FLOWER_ARGS=--quick`.
BENCH_VENV ?= .venv-flower
BENCH_BIN  := $(BENCH_VENV)/bin
BENCH_FLOWER_ARGS ?=

$(BENCH_VENV)/.installed: pyproject.toml
	@echo "commsim: creating $(BENCH_VENV) for bench/bench_flower.py (first use only)"
	$(PYTHON) -m venv $(BENCH_VENV)
	@$(BENCH_BIN)/python -c "import torch" 2>/dev/null && echo "commsim: torch is already installed in $(BENCH_VENV), kept" || \
		$(BENCH_BIN)/pip install --progress-bar on "$(TORCH_SPEC)"
	$(BENCH_BIN)/pip install --progress-bar on -e ".[bench]"
	touch $(BENCH_VENV)/.installed

bench-flower: $(STAMP) $(BENCH_VENV)/.installed
	$(BIN)/python bench/run_all.py --only flower --flower-python $(BENCH_BIN)/python $(BENCH_FLOWER_ARGS)

clean:
	rm -rf results .pytest_cache
