#!/usr/bin/env bash
# metashot's MAML against learn2learn's on the same machine, interleaved, for the speed ratio of issue 3.
# Configs A and B of benchmarks/maml.py, second and first order. metashot: the vectorised path with the
# meta-batch in 2 task chunks on 1 thread each (task_workers=2) and in one chunk on 2 threads, and the per-task
# loop with 2 task chunks; learn2learn (benchmarks/maml_l2l.py) on 2 threads. ROUNDS rounds (default 3), each running every variant once, so that a
# change of machine load hits all of them; one JSON line per run. Run it on an otherwise idle machine.
# Usage: L2L_SRC=/tmp/l2l/learn2learn-0.2.0 [ROUNDS=3] [CONFIGS="A B"] bash benchmarks/maml_vs_l2l.sh > out.jsonl
#        python benchmarks/maml_ratio.py out.jsonl     # medians and ratios
set -euo pipefail
: "${L2L_SRC:?set L2L_SRC to an unpacked learn2learn sdist (see benchmarks/maml_l2l.py)}"
ROUNDS=${ROUNDS:-3}
CONFIGS=${CONFIGS:-A B}
here=$(dirname "$0")
for r in $(seq "$ROUNDS"); do
  for c in $CONFIGS; do
    if [ "$c" = A ]; then iters=20; l2l_iters=10; else iters=3; l2l_iters=2; fi
    for fo in "" --first-order; do
      python "$here/maml.py" --config "$c" $fo --threads 1 --task-workers 2 --iters "$iters"
      python "$here/maml.py" --config "$c" $fo --threads 2 --iters "$iters"
      python "$here/maml.py" --config "$c" $fo --path loop --threads 1 --task-workers 2 --iters "$iters"
      python "$here/maml_l2l.py" --l2l-src "$L2L_SRC" --config "$c" $fo --threads 2 --iters "$l2l_iters"
    done
  done
done
