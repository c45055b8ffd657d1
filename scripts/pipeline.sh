#!/usr/bin/env bash
# The whole DPR pipeline on one machine: train -> encode passages -> index + evaluate, for the untrained
# start and for the trained model, then one top-k table comparing them.
# usage: scripts/pipeline.sh CONFIG TRAIN_JSON DEV_JSON PSGS_TSV QA_CSV BASE_MODEL OUT_DIR
set -euo pipefail
CONFIG=$1 TRAIN=$2 DEV=$3 PSGS=$4 QA=$5 BASE=$6 OUT=$7
PY=${PY:-python}
for f in "$CONFIG" "$TRAIN" "$DEV" "$PSGS" "$QA"; do
  [ -f "$f" ] || { echo "error: $f not found" >&2; exit 1; }
done
mkdir -p "$OUT"
: > "$OUT/timings.tsv"
stage() {  # stage NAME CMD... : run and record wall time
  local name=$1; shift
  local t0=$SECONDS
  echo "==> $name"
  "$@"
  printf '%s\t%s\n' "$name" "$((SECONDS - t0))" >> "$OUT/timings.tsv"
}
# --overwrite_output_dir: a rerun replaces the previous run's checkpoints (refused otherwise)
stage train $PY train_dpr.py --config_file "$CONFIG" --train_file "$TRAIN" --dev_file "$DEV" \
  --base_model "$BASE" --output_dir "$OUT/train" --overwrite_output_dir true
for name in untrained trained; do
  # untrained: the base model serves both towers (test_dpr.py accepts that pair: the same weights)
  if [ $name = untrained ]; then Q=$BASE P=$BASE; else Q=$OUT/train/best/query_encoder P=$OUT/train/best/doc_encoder; fi
  # --overwrite: a rerun retrains at the same path; doc2embedding.py refuses the changed weights without it
  stage "encode ($name)" $PY doc2embedding.py --pretrained_model_path "$P" --output_dir "$OUT/emb_$name" \
    --wikipedia_path "$PSGS" --overwrite
  stage "evaluate ($name)" $PY test_dpr.py --embedding_dir "$OUT/emb_$name" --pretrained_model_path "$Q" \
    --wikipedia_path "$PSGS" --qa_file "$QA" --output_file "$OUT/results_$name.json"
done
$PY scripts/compare_results.py "$OUT/results_untrained.json" "$OUT/results_trained.json" --timings "$OUT/timings.tsv"
