#!/usr/bin/env bash
# The GPU check, one command, under 8 minutes on one GPU with no network; old defaults against new in one call:
#   1. benches (each its own stage and JSON): encoding, the model alone (bench_embed.py (c): each lever, first
#      and second pass over the same batches, peak memory, a profile of new shapes); the training step at
#      batch 128 + 1 hard negative with each lever side by side (bench_train.py --levers; the baseline step,
#      measured on 2026-12-04, is skipped); doc2embedding.py's whole run on psgs_w100-like synthetic passages
#      at the new defaults over 1,000,000 and 200,000 passages and at the old ones (no mask on unpadded
#      batches, 65,536 tokens, 8 workers) over 200,000; exact search against float16/bfloat16 scores
#      re-scored in float32 over 21M vectors (bench_search.py);
#   2. the three scripts end to end on a 200k-passage corpus (data/make_sample.py): train a random-init
#      bert-base in bf16, encode every passage; the fidelity of bf16 weights and of autocast against float32
#      on that corpus, with exact against float16 search over it (bench_fidelity.py); evaluate.
# (The end-to-end grad-cache run passed on 2026-12-04; bench_train's ours_gc times that path, the CPU tests
# check its gradients: it made way for the old-vs-new encodes.) One CPU core writes the corpus and the
# synthetic passages in the background while the first benches run.
# Each stage runs under `timeout` within an overall deadline, so one slow stage cannot starve the rest;
# a stage with under 10 s left is skipped and reported so.
# The bert-base-uncased tokenizer comes from $ASSETS (make gpu-assets); the model is made here.
# What it leaves in $OUT (at most 8 files): log, summary.md (stages, exit codes, seconds, top-k, the figures
# of scripts/gpu_figures.py), bench_table.md, bench.tgz (the benchmarks' JSON), e2e.tgz (training logs,
# results, timings, fidelity).
#   OUT=outputs/gpu_check bash scripts/gpu_check.sh
#   GPU_CHECK_SCALE=tiny OUT=/tmp/gpu_check bash scripts/gpu_check.sh   # same stages, toy sizes, CPU
#   GPU_CHECK_BENCHES="encode_1m train" ...   # a rerun: only these benches (empty: none), then the end-to-end stages
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
  BENCH=(--device gpu --scale nq) DEV=cuda EVAL_BATCH=256 CAP_X=1
  N_ALONE=5000 N_BIG=1000000 N_MID=200000 N_FIDELITY=50000 OLD=(--max_tokens_per_batch 65536 --num_workers 8)
  STEP=(--device cuda --model base --batch_size 128 --chunk 32 --steps 8)
else  # tiny: every stage on a CPU in a few minutes (CAP_X: a shared 2-core CPU starts Python slowly)
  MODEL=tiny PEOPLE="20 4 10" EXTRA=16
  TRAIN="--train_batch_size 8 --max_train_steps 6 --eval_steps 3"
  BENCH=(--device cpu) DEV=cpu EVAL_BATCH=32 CAP_X=5
  N_ALONE=200 N_BIG=2000 N_MID=800 N_FIDELITY=300 OLD=(--max_tokens_per_batch 2048 --num_workers 1)
  STEP=(--device cpu --model small --batch_size 8 --chunk 4 --steps 2)
fi
BENCH_ONLY=${GPU_CHECK_BENCHES-model_alone train encode_1m encode_200k encode_200k_old search}  # a rerun picks ("": none)
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
    "$PY" scripts/gpu_figures.py "$WORK"
  } > "$OUT/summary.md" 2>&1
  cat "$WORK"/bench_*/table.md > "$OUT/bench_table.md" 2>/dev/null
  tar czf "$OUT/bench.tgz" -C "$WORK" $(cd "$WORK" && ls -d bench_* 2>/dev/null) 2>/dev/null
  tar czf "$OUT/e2e.tgz" -C "$WORK" stages.tsv $(cd "$WORK" && ls train_*/train_log.jsonl results*.topk.* fidelity.json 2>/dev/null)
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
T=$ASSETS/bert-base-uncased SYN=$WORK/synthetic.tsv
stage "make data" 150 "$PY" data/make_sample.py --output_dir "$WORK/data" --people $PEOPLE --extra_people "$EXTRA" \
  > "$WORK/make_data.log" 2>&1 &
DATA=$!
stage "make passages" 150 "$PY" bench/bench_embed.py --n "$N_BIG" --write_tsv "$SYN" --tokenizer "$T" > "$WORK/make_passages.log" 2>&1 &
PASSAGES=$!
EMBED=("$PY" bench/bench_embed.py --device "$DEV" --model "$MODEL" --tokenizer "$T")
for b in $BENCH_ONLY; do  # one bench per stage: each gets its own time limit and its own JSON
  case $b in encode_*) [ -n "$PASSAGES" ] && { wait $PASSAGES; cat "$WORK/make_passages.log"; PASSAGES=; } ;; esac
  mkdir -p "$WORK/bench_$b"
  case $b in
    model_alone) stage "bench $b" 90 "${EMBED[@]}" --n "$N_ALONE" --skip a b --profile --json "$WORK/bench_$b/encode.json" ;;
    encode_1m) stage "bench $b" 150 "${EMBED[@]}" --tsv "$SYN" --n "$N_BIG" --skip a c --json "$WORK/bench_$b/encode.json" ;;
    encode_200k) stage "bench $b" 90 "${EMBED[@]}" --tsv "$SYN" --n "$N_MID" --skip a c --json "$WORK/bench_$b/encode.json" ;;
    encode_200k_old) stage "bench $b" 90 env NANODPR_ALWAYS_MASK=0 "${EMBED[@]}" --tsv "$SYN" --n "$N_MID" --skip a c \
                       "${OLD[@]}" --json "$WORK/bench_$b/encode.json" ;;
    train) stage "bench $b" 100 "$PY" bench/bench_train.py "${STEP[@]}" --levers pad8 mask4d no_cudnn sync --no_baseline --profile \
             --json "$WORK/bench_$b/train.json" ;;
    *) stage "bench $b" 90 "$PY" bench/run_all.py "${BENCH[@]}" --only "$b" --tokenizer "$T" --out "$WORK/bench_$b" ;;
  esac
done
[ -n "$PASSAGES" ] && wait $PASSAGES
wait $DATA
cat "$WORK/make_data.log"

D=$WORK/data
COMMON=(--train_file "$D/train.json" --dev_file "$D/dev.json" --base_model "$WORK/base_model" --max_train_epochs 100
        --warmup_steps 20 --lr 1e-4 --num_hard_negatives 1 --val_av_rank_start_epoch 0 --eval_batch_size "$EVAL_BATCH"
        --log_steps 20 --save_total_limit 1 --num_workers 2 --overwrite_output_dir true)  # WORK may be reused
stage "train bf16" 75 "$PY" train_dpr.py "${COMMON[@]}" $TRAIN --mixed_precision auto --output_dir "$WORK/train_bf16"

Q=$WORK/train_bf16/best/query_encoder P=$WORK/train_bf16/best/doc_encoder
[ -d "$P" ] || { echo "no trained model: encoding with the untrained one"; Q=$WORK/base_model P=$WORK/base_model; }
stage "encode" 60 "$PY" doc2embedding.py --pretrained_model_path "$P" --wikipedia_path "$D/psgs.tsv" --output_dir "$WORK/emb" --overwrite
stage "fidelity" 75 "$PY" bench/bench_fidelity.py --doc_encoder "$P" --query_encoder "$Q" --wikipedia_path "$D/psgs.tsv" \
  --qa_file "$D/test.qa.csv" --limit "$N_FIDELITY" --json "$WORK/fidelity.json"
stage "evaluate" 45 "$PY" test_dpr.py --embedding_dir "$WORK/emb" --pretrained_model_path "$Q" --wikipedia_path "$D/psgs.tsv" \
  --qa_file "$D/test.qa.csv" --output_file "$WORK/results.json"
