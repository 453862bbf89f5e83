#!/usr/bin/env bash
# Test figures of the bundled `photos` model, computed once after its choice (issue 25 "Done when"):
# `metashot eval photos` on mini-ImageNet test and Flowers-102 test classes, 5-way 1/5-shot, 15 queries per
# class (75 per episode), 600 episodes (seed 1234), balanced and Dirichlet(2) queries, transductive (the
# bundled head) and --inductive. One JSON line each to $OUT (default results/photos/bundled_test.jsonl).
#   METASHOT_DATA=../shared/data bash benchmarks/photos/test_phase.sh
set -euo pipefail
OUT=${OUT:-results/photos/bundled_test.jsonl}
mkdir -p "$(dirname "$OUT")"
for ds in "mini_imagenet test" "flowers102 test"; do
  set -- $ds
  for shots in 1 5; do
    for imb in "" "--imbalance dirichlet:2"; do
      for mode in "" "--inductive"; do
        metashot eval photos --dataset "$1" --split "$2" --ways 5 --shots "$shots" --queries 15 \
          --episodes 600 --seed 1234 --threads 2 --json --quiet $imb $mode \
          | python -c "import json,sys; r=json.load(sys.stdin); r['split']='$2'; r['mode']='${mode:-transductive}'; print(json.dumps(r))" \
          | tee -a "$OUT"
      done
    done
  done
done
