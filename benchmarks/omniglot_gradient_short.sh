#!/usr/bin/env bash
# Short CPU runs of the gradient-based Omniglot 5-way 1-shot presets that have no full training on record
# (configs/{anil,metasgd,reptile}-omniglot-5w1s.yaml): each trained for STEPS meta-steps (default 1000) with its
# preset's settings otherwise, no validation (final weights), one thread, then evaluated on the Vinyals test split
# (1000 episodes, seed 1234, 15 queries per class, the preset's test-time inner steps). One job at a time.
# Logs go to logs/omniglot-short/, JSON results to results/omniglot-short/.
# Usage (repo root): METASHOT_DATA=../shared/data STEPS=1000 bash benchmarks/omniglot_gradient_short.sh [METHOD ...]
# A METHOD may also be a whole preset name, e.g. maml-omniglot-20w1s (configs/maml-omniglot-20w1s.yaml).
set -uo pipefail
STEPS=${STEPS:-1000}
MS=${METASHOT:-metashot}
LOG=logs/omniglot-short RES=results/omniglot-short
mkdir -p "$LOG" "$RES"
for m in "${@:-anil metasgd reptile}"; do
  for method in $m; do
    preset=$method
    [[ $preset == *-omniglot-* ]] || preset=$method-omniglot-5w1s
    name=$preset-$STEPS
    t0=$(date +%s)
    if ! $MS train "configs/$preset.yaml" --quiet --set name="$name" --set train.steps="$STEPS" \
        --set train.val_every=0 --set train.threads=1 > "$LOG/$name-train.log" 2>&1; then
      echo "$name: training failed, see $LOG/$name-train.log" >&2
      continue
    fi
    t1=$(date +%s)
    $MS eval "runs/$name" --threads 1 --json > "$RES/$name.json" 2> "$LOG/$name-eval.err"
    echo "$name (train $(( t1 - t0 )) s, eval $(( $(date +%s) - t1 )) s): $(cat "$RES/$name.json")"
  done
done
