#!/usr/bin/env bash
# GPU run: Trainer step speed (benchmarks/train_step.py) for ProtoNet (60-way 1-shot, conv4-64) and MAML
# (5-way 1-shot, 32 tasks, second order) on Omniglot. One process measures four variants (host batches; pinned
# host batches; the store on the GPU; the store on the GPU + bf16 autocast), a second one torch.compile
# (ProtoNet, capped at 40 s). JSON lines in $OUT/train_step.jsonl; under a minute on one H100 after the
# one-time Omniglot store build (timed in $OUT/gpu.txt).
# Usage (repo root): METASHOT_DATA=<data> OUT=<dir> bash benchmarks/gpu/train_step.sh
# (DEVICE=cpu STEPS=1 WARMUP=0 runs the same script as a smoke test without a GPU.)
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
export METASHOT_CACHE=${METASHOT_CACHE:-$OUT/cache}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-5}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
$PY - <<'PY' | tee -a "$OUT/gpu.txt"
import time, torch
t = time.perf_counter()
from metashot.data import load_split
shape = tuple(load_split("omniglot", "train").images.shape)
print("torch", torch.__version__, "| omniglot train store", shape, f"built/loaded in {time.perf_counter() - t:.1f} s")
PY
run() {
  local limit=$1; shift
  timeout "$limit" $PY benchmarks/train_step.py --device "$DEVICE" --steps "$STEPS" --warmup "$WARMUP" "$@" \
    >> "$OUT/train_step.jsonl" 2>> "$OUT/train_step.err" \
    || echo "{\"variant\": \"$*\", \"error\": \"exit code $? (limit $limit s)\"}" >> "$OUT/train_step.jsonl"
}
run 90 --sweep
run 40 --data-on-device --compile --algorithms protonet
cat "$OUT/train_step.jsonl"
