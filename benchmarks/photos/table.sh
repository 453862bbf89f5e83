#!/usr/bin/env bash
# The photo table of RESULTS.md: fit each config (`metashot train`: statistics only, no gradient steps), then
# `metashot eval` on 600 fixed test episodes (seed 1234, 15 queries per class), 5-way 1-shot and 5-shot, on the
# mini-ImageNet test classes and on Flowers-102 (all 51 shipped classes, and the 25 `test` classes that no model
# choice looked at). One JSON line per evaluation goes to $OUT (default results/photos/test.jsonl).
#   bash benchmarks/photos/table.sh configs/photos-frozen-lite0.yaml configs/photos.yaml
set -euo pipefail
OUT=${OUT:-results/photos/test.jsonl}
THREADS=${THREADS:-2}
mkdir -p "$(dirname "$OUT")"
for cfg in "$@"; do
  name=$(basename "$cfg" .yaml)
  metashot train "$cfg" --quiet --set train.threads="$THREADS" > /dev/null
  for ds in "mini_imagenet test" "flowers102 all" "flowers102 test"; do
    set -- $ds
    for shots in 1 5; do
      metashot eval "runs/$name" --dataset "$1" --split "$2" --ways 5 --shots "$shots" --queries 15 \
        --episodes 600 --seed 1234 --threads "$THREADS" --json --quiet \
        | python -c "import json,sys; r=json.load(sys.stdin); r['config']='$cfg'; r['split']='$2'; print(json.dumps(r))" \
        | tee -a "$OUT"
    done
  done
done
