# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv on first use and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch==2.13.0 is the CPU build; on a GPU machine install your own CUDA build
# into .venv first (or run `make TORCH_SPEC=torch`), it is then kept as it is.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench bench-render papers papers-quick clean

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

demo: $(STAMP)
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

# Every benchmark, one after the other (about 12 min here; run it on a quiet machine), then
# docs/performance.md regenerated from bench/results/*.json (bench/run_all.py, bench/render.py).
bench: $(STAMP)
	$(BIN)/python bench/run_all.py

bench-render: $(STAMP)
	$(BIN)/python bench/render.py

clean:
	rm -rf results .pytest_cache
