#!/usr/bin/env bash
# The reproduction study of docs/results.md: 200 sequential CounterFact edits of SmolLM2-135M with ROME,
# MEMIT (10 facts per step) and MEND, each without and with PRUNE (α = e), plus MEND + PRUNE with α = 1.2.
# Each run is the composition configs/base.yaml + editor/<editor>.yaml [+ restraint/prune.yaml], with κ(W)
# measured every 10 edits.
# Edit metrics and the four downstream tasks are measured at 10, 50, 100 and 200 edits (and before editing).
#
#   bash benchmarks/run_study.sh               # all seven runs, two at a time (one torch thread each)
#   bash benchmarks/run_study.sh rome mend     # only the named runs, one after another
#
# Runs land in logs/study/<run>/version_<n>/ (results.json, spectral.json, TensorBoard events);
# console output in logs/study/<run>.out; wall-clock times in logs/study/timings.tsv.
# MEND needs checkpoints/mend/best.ckpt (python cli.py fit --config configs/mend.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
N="${STUDY_EDITS:-200}"
AT="${STUDY_EVAL_AT:-[10,50,100,200]}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # two runs share a 2-core CPU: one thread each is faster
mkdir -p logs/study

run() {  # $1 = run name
  local name=$1 parts extra=() rc
  case "$name" in
    rome)            parts="editor/rome.yaml" ;;
    rome_prune)      parts="editor/rome.yaml restraint/prune.yaml" ;;
    memit)           parts="editor/memit.yaml" ;;
    memit_prune)     parts="editor/memit.yaml restraint/prune.yaml" ;;
    mend)            parts="editor/mend.yaml" ;;
    mend_prune)      parts="editor/mend.yaml restraint/prune.yaml" ;;
    mend_prune_a1.2) parts="editor/mend.yaml restraint/prune.yaml"; extra=(--model.init_args.restraint.init_args.alpha 1.2) ;;
    *) echo "unknown run: $name" >&2; return 2 ;;
  esac
  local configs=(--config base.yaml)
  for part in $parts; do configs+=(--config "$part"); done
  local start=$SECONDS
  "$PY" cli.py test "${configs[@]}" "${extra[@]}" \
    --model.init_args.diagnostics.init_args.kappa_every_n_edits 10 \
    --trainer.logger.init_args.name "study/$name" \
    --data.init_args.num_edits "$N" \
    --model.init_args.eval_at "$AT" \
    --model.init_args.downstream_at "$AT" \
    >"logs/study/$name.out" 2>&1 && rc=0 || rc=$?
  printf '%s\t%s\t%d\t%s\n' "$name" "$(date -u +%FT%TZ)" "$((SECONDS - start))" "rc=$rc" >>logs/study/timings.tsv
  return $rc
}

lane() { for name in "$@"; do run "$name" || echo "run $name failed (see logs/study/$name.out)" >&2; done; }

if [ $# -gt 0 ]; then
  lane "$@"
else
  lane rome memit mend mend_prune_a1.2 &
  lane rome_prune memit_prune mend_prune &
  wait
fi
