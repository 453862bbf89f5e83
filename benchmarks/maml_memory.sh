#!/usr/bin/env bash
# Peak memory of second-order MAML at 1, 5 and 10 inner steps, with and without gradient checkpointing of the
# inner steps (loop path), and the vectorized path; config A shapes with META_BATCH tasks (default 8).
# Usage: bash benchmarks/maml_memory.sh [DEVICE] > maml_memory.jsonl   (one JSON line per run)
set -euo pipefail
DEVICE=${1:-cpu}
MB=${META_BATCH:-8}
PY=${PY:-python}
for steps in 1 5 10; do
  $PY benchmarks/maml.py --config A --path loop --steps "$steps" --meta-batch "$MB" --iters 1 --device "$DEVICE" --threads 1
  $PY benchmarks/maml.py --config A --path loop --steps "$steps" --meta-batch "$MB" --iters 1 --device "$DEVICE" \
    --threads 1 --checkpoint-inner
  $PY benchmarks/maml.py --config A --path vectorized --steps "$steps" --meta-batch "$MB" --iters 1 \
    --device "$DEVICE" --threads 1
done
