#!/usr/bin/env bash
# The GPU check, one command, under 8 minutes on one GPU with no network:
#   1. the benchmarks at NQ scale (bench/run_all.py --device gpu --scale nq: bert-base, 21M vectors),
#      one bench per call, while one CPU core writes a synthetic corpus of 200k passages
#      (data/make_sample.py);
#   2. the three scripts end to end on that corpus: train a random-init bert-base in bf16, encode
#      every passage, search + evaluate the test questions;
#   3. training again with a gradient cache (bench train times that path too, so it goes last).
# Each stage runs under `timeout` within an overall deadline, so one slow stage cannot starve the rest;
# a stage with under 10 s left is skipped and reported so.
# The bert-base-uncased tokenizer comes from $ASSETS (make gpu-assets); the model is made here.
# What it leaves in $OUT (at most 8 files): log, summary.md (stages, exit codes, seconds, top-k),
# bench_table.md, bench.tgz (the benchmarks' JSON), e2e.tgz (training logs, results, timings).
#   OUT=outputs/gpu_check bash scripts/gpu_check.sh
#   GPU_CHECK_SCALE=tiny OUT=/tmp/gpu_check bash scripts/gpu_check.sh   # same stages, toy sizes, CPU
#   GPU_CHECK_BENCHES=encode ...   # a rerun: only these benches (empty: none), then the end-to-end stages
set -uo pipefail
OUT=${OUT:?set OUT to the folder for the results}
PY=${PY:-python3}
ASSETS=${ASSETS:-.gpu}
SCALE=${GPU_CHECK_SCALE:-full}
WORK=${WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
export PYTHONUNBUFFERED=1

if [ "$SCALE" = full ]; then
  MODEL=bert-base PEOPLE="700 50 200" EXTRA=15717  # 12 passages a person: 200,004 passages, 4,200 train questions
  TRAIN="--train_batch_size 64 --max_train_steps 200 --eval_steps 200"
  GC="--grad_cache_chunk_size 16 --max_train_steps 100 --eval_steps 100"
  BENCH=(--device gpu --scale nq) BENCH_ONLY="train encode search score" EVAL_BATCH=256 CAP_X=1
else  # tiny: every stage on a CPU in a few minutes (CAP_X: a shared 2-core CPU starts Python slowly)
  MODEL=tiny PEOPLE="20 4 10" EXTRA=16
  TRAIN="--train_batch_size 8 --max_train_steps 6 --eval_steps 3"
  GC="--grad_cache_chunk_size 4 --max_train_steps 4 --eval_steps 2"
  BENCH=(--device cpu) BENCH_ONLY="score" EVAL_BATCH=32 CAP_X=5
fi
BENCH_ONLY=${GPU_CHECK_BENCHES-$BENCH_ONLY}  # a rerun can pick benches (GPU_CHECK_BENCHES=encode) or none ("")
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-$((470 * CAP_X))}))
mkdir -p "$OUT" "$WORK"
: > "$WORK/stages.tsv"

stage() {  # stage NAME CAP_S CMD...: run CMD under min(CAP_S, time left), record exit code and seconds
  local name=$1 cap=$(($2 * CAP_X)) left=$((DEADLINE - SECONDS)) t0=$SECONDS rc
  shift 2
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 10 ]; then
    echo "==> $name: skipped, out of time"; printf '%s\tskipped\t0\n' "$name" >> "$WORK/stages.tsv"; return 1
  fi
  echo "==> $name (limit ${cap}s): $*"
  timeout -k 10 "$cap" "$@"
  rc=$?
  [ "$rc" = 124 ] && echo "==> $name: timed out after ${cap}s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$WORK/stages.tsv"
  return "$rc"
}

collect() {  # whatever happened: the summary and archives into $OUT; exit 1 if a stage failed
  {
    echo "# GPU check ($SCALE), $(date -u +%F)"; echo
    echo "| stage | exit code | seconds |"; echo "|---|---|---|"
    awk -F'\t' '{print "| " $1 " | " $2 " | " $3 " |"}' "$WORK/stages.tsv"
    [ -f "$WORK/results.json" ] && "$PY" scripts/compare_results.py "$WORK/results.json"
  } > "$OUT/summary.md" 2>&1
  cat "$WORK"/bench_*/table.md > "$OUT/bench_table.md" 2>/dev/null
  tar czf "$OUT/bench.tgz" -C "$WORK" $(cd "$WORK" && ls -d bench_* 2>/dev/null) 2>/dev/null
  tar czf "$OUT/e2e.tgz" -C "$WORK" stages.tsv $(cd "$WORK" && ls train_*/train_log.jsonl results.topk.* 2>/dev/null)
  cat "$OUT/summary.md"
  awk -F'\t' '$2 != 0 {bad = 1} END {exit bad}' "$WORK/stages.tsv" || exit 1
}
trap collect EXIT

echo "GPU check ($SCALE) in $WORK, results to $OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
"$PY" -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__)'

# a random-init BERT with the bert-base-uncased tokenizer (speed and plumbing do not depend on the weights)
stage "make $MODEL model" 45 "$PY" - "$MODEL" "$ASSETS/bert-base-uncased" "$WORK/base_model" <<'EOF'
import sys
import torch
from transformers import AutoTokenizer, BertConfig, BertModel
size, tokenizer_dir, out = sys.argv[1:]
tiny = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **(tiny if size == "tiny" else {})), add_pooling_layer=False)
model.save_pretrained(out)
tokenizer.save_pretrained(out)
print(f"{size}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters -> {out}")
EOF
stage "make data" 150 "$PY" data/make_sample.py --output_dir "$WORK/data" --people $PEOPLE --extra_people "$EXTRA" \
  > "$WORK/make_data.log" 2>&1 &
DATA=$!
for b in $BENCH_ONLY; do  # one bench per call: each gets its own time limit and its own table
  stage "bench $b" 120 "$PY" bench/run_all.py "${BENCH[@]}" --only "$b" --tokenizer "$ASSETS/bert-base-uncased" --out "$WORK/bench_$b"
done
wait $DATA
cat "$WORK/make_data.log"

D=$WORK/data
COMMON=(--train_file "$D/train.json" --dev_file "$D/dev.json" --base_model "$WORK/base_model" --max_train_epochs 100
        --warmup_steps 20 --lr 1e-4 --num_hard_negatives 1 --val_av_rank_start_epoch 0 --eval_batch_size "$EVAL_BATCH"
        --log_steps 20 --save_total_limit 1 --num_workers 2 --overwrite_output_dir true)  # WORK may be reused
stage "train bf16" 75 "$PY" train_dpr.py "${COMMON[@]}" $TRAIN --mixed_precision auto --output_dir "$WORK/train_bf16"

Q=$WORK/train_bf16/best/query_encoder P=$WORK/train_bf16/best/doc_encoder
[ -d "$P" ] || { echo "no trained model: encoding with the untrained one"; Q=$WORK/base_model P=$WORK/base_model; }
stage "encode" 75 "$PY" doc2embedding.py --pretrained_model_path "$P" --wikipedia_path "$D/psgs.tsv" --output_dir "$WORK/emb" --overwrite
stage "evaluate" 45 "$PY" test_dpr.py --embedding_dir "$WORK/emb" --pretrained_model_path "$Q" --wikipedia_path "$D/psgs.tsv" \
  --qa_file "$D/test.qa.csv" --output_file "$WORK/results.json"
stage "train bf16 + grad cache" 60 "$PY" train_dpr.py "${COMMON[@]}" $TRAIN $GC --mixed_precision auto --output_dir "$WORK/train_gc"
