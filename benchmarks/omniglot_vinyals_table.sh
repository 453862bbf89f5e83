#!/usr/bin/env bash
# The Omniglot Vinyals-split table of issue 4: Matching Nets and Relation Nets trained once each
# (configs/{matching,relation}-omniglot-vinyals.yaml), then every model, the bundled ProtoNet included,
# evaluated at 5-way and 20-way, 1-shot and 5-shot, on the same EPISODES test episodes per setting (default
# 600, seed 1234, 15 queries per class). One thread per job, one job at a time. Logs go to logs/vinyals/, JSON results to
# results/vinyals/.
# Usage (repo root): METASHOT_DATA=../shared/data bash benchmarks/omniglot_vinyals_table.sh [train|eval|all]
# MODELS="runs/X protonet-omniglot" limits the evaluations to these checkpoints (default: all three);
# SETTINGS="5x1 5x5" to these ways x shots (default: 5x1 5x5 20x1 20x5); TRAIN="relation5" trains only these
# (default: matching relation relation5; relation5 = configs/relation5-omniglot-vinyals.yaml, Relation Nets
# trained on 5-shot episodes for the 5-shot cells, as the paper trains one model per setting); META_BATCH=5
# evaluates that many episodes per forward pass (Relation Nets at 20 ways need a small one to fit in memory).
set -uo pipefail
WHAT=${1:-all}
MS=${METASHOT:-metashot}
EPISODES=${EPISODES:-600}
LOG=logs/vinyals RES=results/vinyals
mkdir -p "$LOG" "$RES"
if [ "$WHAT" != eval ]; then
  for m in ${TRAIN:-matching relation relation5}; do
    t0=$(date +%s)
    if ! $MS train "configs/$m-omniglot-vinyals.yaml" --quiet > "$LOG/$m-train.log" 2>&1; then
      echo "$m: training failed, see $LOG/$m-train.log" >&2
      exit 1
    fi
    echo "$m train wall $(( $(date +%s) - t0 )) s" | tee -a "$LOG/$m-train.log"
  done
fi
if [ "$WHAT" != train ]; then
  for model in ${MODELS:-runs/matching-omniglot-vinyals runs/relation-omniglot-vinyals runs/relation5-omniglot-vinyals protonet-omniglot}; do
    tag=$(basename "$model")
    for setting in ${SETTINGS:-5x1 5x5 20x1 20x5}; do
      set -- ${setting/x/ }
      t0=$(date +%s)
      $MS eval "$model" --ways "$1" --shots "$2" --queries 15 --episodes "$EPISODES" --seed 1234 --threads 1 --json \
        ${META_BATCH:+--meta-batch "$META_BATCH"} \
        > "$RES/$tag-$1w$2s.json" 2> "$LOG/$tag-$1w$2s.err"
      echo "$tag $1-way $2-shot ($(( $(date +%s) - t0 )) s): $(cat "$RES/$tag-$1w$2s.json")"
    done
  done
fi
