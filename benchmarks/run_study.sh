#!/usr/bin/env bash
# The study of docs/results.md: 1,000 sequential CounterFact edits of SmolLM2-135M (the same cases, in file
# order, in every arm), general abilities measured as they go, with and without PRUNE.
#
#   bash benchmarks/run_study.sh                    # every arm, one after another
#   bash benchmarks/run_study.sh rome rome_prune    # only the named arms
#   STUDY_EDITS=200 STUDY_MODEL=tiny-llama bash benchmarks/run_study.sh rome   # a quick check of the pipeline
#
# Settings (environment): STUDY_EDITS (1000), STUDY_MODEL (smollm2-135m), STUDY_DIR (logs/study),
# STUDY_PROBE_TOKENS (5000), STUDY_DOWNSTREAM_LIMIT (200), STUDY_EVAL_EVERY (probes and edit metrics every
# this many edits; 250, or STUDY_EDITS when smaller), STUDY_BATCH (requests per edit step of the MEMIT and
# AlphaEdit arms; empty = the study's: 1 for MEMIT as PRUNE's reference loop runs it, AlphaEdit's config value 100
# as its paper), STUDY_MEND_SEQ_CKPT and STUDY_MEND_Z_CLIP (the mend_seq arms), STUDY_DRY_RUN=1 (print each named arm's command, run nothing),
# STUDY_FORCE=1 (rerun the named arms from the
# start; their earlier checkpoints and logs move to $STUDY_DIR/replaced/), PYTHON.
#
# Arms (each a composition of configs/base.yaml + editor/ + restraint/ + data/ fragments):
#   rome            ROME, no restraint; its "restrained once at N" curve comes from the same run
#                   (restraint/prune_at_end.yaml with evaluate_at_end_curve), so PRUNE's reference timing
#                   needs no second run
#   rome_prune      ROME + PRUNE after every edit
#   memit, memit_prune, alphaedit, alphaedit_prune   MEMIT one fact per step, AlphaEdit batches of 100 (editor/alphaedit.yaml);
#                                                    STUDY_BATCH sets both. memit and
#                                                    alphaedit carry their at-end curve as rome does (a point
#                                                    where no σ of ΔW exceeds σ_max(W₀) reuses its scores)
#   mend, mend_prune                                 one edit per step (needs checkpoints/mend/best.ckpt)
#   mend_seq, mend_seq_prune                         the same with the hypernetwork trained on sequences of edits
#                                                    (configs/mend_sequential_cloc10.yaml; STUDY_MEND_SEQ_CKPT, default its
#                                                    step-1,750 checkpoint, docs/mend.md) and its inputs clipped to
#                                                    ±STUDY_MEND_Z_CLIP (3: the screen on cases 2000–2099, docs/mend.md);
#                                                    mend_seq carries its at-N curve
#   rome_key_aware, alphaedit_key_aware              + key-aware PRUNE after every step, threshold "energy" at scale
#                                                    STUDY_KEY_SCALE (0.2: the screen's candidate, docs/restraints.md)
#   rome_sphere, alphaedit_sphere                    + SPHERE (restraint/sphere.yaml, the reference README's settings)
#   zsre_rome, zsre_rome_prune                       ZsRE eval cases, ROME ± PRUNE (per edit); zsre_rome carries
#                                                    its at-N curve as rome does
# Every arm: probes (perplexity and KL from the unedited model on 5,000 WikiText-2 test tokens) and edit
# metrics every 250 edits (a batch editor: at the first step at or past each multiple); the four downstream tasks (200 examples each, all of a task's file where it has
# fewer) at 0, 250, 500 and 1,000 edits; σ_max(ΔW)/σ_max(W₀) every edit and κ(W) every 50.
#
# Resumable: every arm checkpoints every 100 edits under $STUDY_DIR/checkpoints/<arm>/ and this script
# resumes an arm that has a checkpoint. An arm whose results.json exists is skipped (STUDY_FORCE=1 reruns).
# Runs land in $STUDY_DIR/logs/<arm>/version_<n>/; console output in $STUDY_DIR/<arm>.out; wall times in
# $STUDY_DIR/timings.tsv. Tables and figures: python -m prune_lit.analysis.study_report --study $STUDY_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
N="${STUDY_EDITS:-1000}"
MODEL="${STUDY_MODEL:-smollm2-135m}"
DIR="${STUDY_DIR:-logs/study}"
PROBE_TOKENS="${STUDY_PROBE_TOKENS:-5000}"
LIMIT="${STUDY_DOWNSTREAM_LIMIT:-200}"
EVAL_EVERY="${STUDY_EVAL_EVERY:-$((N >= 250 ? 250 : N))}"
BATCH="${STUDY_BATCH:-}"
KEY_SCALE="${STUDY_KEY_SCALE:-0.2}"
MEND_SEQ_CKPT="${STUDY_MEND_SEQ_CKPT:-checkpoints/mend_seq_cloc10/val/step1750.ckpt}"
MEND_Z_CLIP="${STUDY_MEND_Z_CLIP:-3}"
MEND_SEQ=(--model.init_args.editor.init_args.checkpoint "$MEND_SEQ_CKPT" --model.init_args.editor.init_args.input_z_clip "$MEND_Z_CLIP")
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
[ -n "${STUDY_DRY_RUN:-}" ] || mkdir -p "$DIR"

every() {  # every $1 up to $N, as a YAML list
  local step=$1 out="" i
  for ((i = step; i <= N; i += step)); do out+="${out:+,}$i"; done
  echo "[$out]"
}
EVAL_AT="$(every "$EVAL_EVERY")"
DOWN_AT="[$((N / 4)),$((N / 2)),$N]"

ARMS_ALL=(rome rome_prune alphaedit alphaedit_prune memit memit_prune zsre_rome zsre_rome_prune mend mend_prune mend_seq mend_seq_prune
          rome_key_aware rome_sphere alphaedit_key_aware alphaedit_sphere)
KEY_AWARE=(--model.init_args.restraint.init_args.threshold energy --model.init_args.restraint.init_args.threshold_scale "$KEY_SCALE")

run() {  # $1 = arm
  local arm=$1 parts extra=()
  case "$arm" in
    rome)             parts="editor/rome.yaml restraint/prune_at_end.yaml"; extra=(--model.init_args.restraint.init_args.evaluate_at_end_curve true) ;;
    rome_prune)       parts="editor/rome.yaml restraint/prune.yaml" ;;
    memit)            parts="editor/memit.yaml restraint/prune_at_end.yaml"; extra=(--model.init_args.restraint.init_args.evaluate_at_end_curve true) ;;
    memit_prune)      parts="editor/memit.yaml restraint/prune.yaml" ;;
    alphaedit)        parts="editor/alphaedit.yaml restraint/prune_at_end.yaml"; extra=(--model.init_args.restraint.init_args.evaluate_at_end_curve true) ;;
    alphaedit_prune)  parts="editor/alphaedit.yaml restraint/prune.yaml" ;;
    rome_key_aware)   parts="editor/rome.yaml restraint/prune_key_aware.yaml"; extra=("${KEY_AWARE[@]}") ;;
    rome_sphere)      parts="editor/rome.yaml restraint/sphere.yaml" ;;
    alphaedit_key_aware) parts="editor/alphaedit.yaml restraint/prune_key_aware.yaml"; extra=("${KEY_AWARE[@]}") ;;
    alphaedit_sphere) parts="editor/alphaedit.yaml restraint/sphere.yaml" ;;
    mend)             parts="editor/mend.yaml" ;;
    mend_prune)       parts="editor/mend.yaml restraint/prune_factored.yaml" ;;
    mend_seq)         parts="editor/mend.yaml restraint/prune_at_end.yaml"; extra=(--model.init_args.restraint.init_args.evaluate_at_end_curve true "${MEND_SEQ[@]}") ;;
    mend_seq_prune)   parts="editor/mend.yaml restraint/prune_factored.yaml"; extra=("${MEND_SEQ[@]}") ;;
    zsre_rome)        parts="editor/rome.yaml restraint/prune_at_end.yaml data/zsre.yaml"; extra=(--model.init_args.restraint.init_args.evaluate_at_end_curve true) ;;
    zsre_rome_prune)  parts="editor/rome.yaml restraint/prune.yaml data/zsre.yaml" ;;
    *) echo "unknown arm: $arm (known: ${ARMS_ALL[*]})" >&2; return 2 ;;
  esac
  case "$arm" in  # batch editors: STUDY_BATCH overrides the study's requests per step
    memit*) extra+=(--data.init_args.batch_size "${BATCH:-1}") ;;
    alphaedit*) if [ -n "$BATCH" ]; then extra+=(--data.init_args.batch_size "$BATCH"); fi ;;
  esac
  if [ -z "${STUDY_DRY_RUN:-}" ]; then
    if [ -z "${STUDY_FORCE:-}" ] && compgen -G "$DIR/logs/$arm/version_*/results.json" >/dev/null; then
      echo "$arm: done already ($DIR/logs/$arm), skipped"; return 0
    fi
    if [ -n "${STUDY_FORCE:-}" ] && [ -e "$DIR/checkpoints/$arm" -o -e "$DIR/logs/$arm" ]; then
      # A forced rerun starts afresh: resuming would reload the finished run's last checkpoint and edit nothing.
      # Its old runs move aside, so that a killed forced rerun resumes (without STUDY_FORCE) like any other.
      local old="$DIR/replaced/$arm-$(date -u +%Y%m%dT%H%M%S)"
      mkdir -p "$old"
      for sub in checkpoints logs; do [ -e "$DIR/$sub/$arm" ] && mv "$DIR/$sub/$arm" "$old/$sub"; done
      echo "$arm: STUDY_FORCE: its earlier checkpoints and logs moved to $old"
    fi
  fi
  local configs=(--config base.yaml)
  for part in $parts; do configs+=(--config "$part"); done
  local resume=false
  [ -f "$DIR/checkpoints/$arm/latest" ] && resume=true
  local cmd=("$PY" cli.py test "${configs[@]}" "${extra[@]}"
    --model.init_args.model_name "$MODEL"
    --data.init_args.num_edits "$N"
    --model.init_args.eval_at "$EVAL_AT"
    --model.init_args.downstream_at "$DOWN_AT"
    --model.init_args.downstream.init_args.limit "$LIMIT"
    --model.init_args.probe_tokens "$PROBE_TOKENS"
    --model.init_args.diagnostics.init_args.kappa_every_n_edits 50
    --model.init_args.checkpoint_dir "$DIR/checkpoints"
    --model.init_args.checkpoint_every 100
    --model.init_args.run_name "$arm"
    --model.init_args.resume "$resume"
    --trainer.logger.init_args.save_dir "$DIR/logs"
    --trainer.logger.init_args.name "$arm"
    --trainer.enable_progress_bar false)
  if [ -n "${STUDY_DRY_RUN:-}" ]; then  # print the arm's command (one line, shell-quoted) and run nothing
    printf '%q ' "${cmd[@]}"; echo; return 0
  fi
  echo "$arm: starting (resume=$resume) at $(date -u +%T)"
  local start=$SECONDS rc
  nice -n 5 "${cmd[@]}" >>"$DIR/$arm.out" 2>&1 && rc=0 || rc=$?
  printf '%s\t%s\t%d\t%s\tresume=%s\n' "$arm" "$(date -u +%FT%TZ)" "$((SECONDS - start))" "rc=$rc" "$resume" >>"$DIR/timings.tsv"
  return $rc
}

ARMS=("$@")
[ ${#ARMS[@]} -eq 0 ] && ARMS=("${ARMS_ALL[@]}")
for arm in "${ARMS[@]}"; do run "$arm" || echo "arm $arm failed (see $DIR/$arm.out)" >&2; done
