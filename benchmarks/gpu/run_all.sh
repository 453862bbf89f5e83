#!/usr/bin/env bash
# One GPU session for every device check, in two phases so that speed figures are taken on an idle GPU:
#   1. benchmarks alone: benchmarks/gpu/maml.sh's benchmark part (then its capped MAML training continues
#      in phase 2) and benchmarks/gpu/train_step.sh (capped);
#   2. trainings concurrently, each capped (a capped Trainer checkpoints on SIGTERM): ProtoNet Omniglot 1-shot
#      and 5-shot with the paper's protocol (protonet-omniglot-5w1s/5w5s), benchmarks/gpu/lake.sh and
#      benchmarks/gpu/metalstm.sh.
# Everything lands in $OUT/gpu_results.tar.gz (run folders, JSON, logs) and $OUT/run_all.log.
# Usage (repo root): METASHOT_DATA=<data with omniglot/ and mini_imagenet/> OUT=<dir> bash benchmarks/gpu/run_all.sh
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PY:-python3}
: "${OUT:?set OUT}"
G=${G:-/tmp/gpu_results}
export METASHOT_CACHE=${METASHOT_CACHE:-$PWD/cache/stores}
PN_S=${PN_S:-110}
mkdir -p "$G" runs
exec > >(tee -a "$OUT/run_all.log") 2>&1
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
for s in train val test background background_small1 background_small2; do
  $PY -c "from metashot.data import load_split; load_split('omniglot', '$s')" &
done
wait
stamp "stores ready"

# Phase 1: MAML benchmarks on an idle GPU; its capped training continues in phase 2.
OUT=$G/maml bash benchmarks/gpu/maml.sh > "$G/maml.log" 2>&1 &
maml=$!
for i in $(seq 1 150); do grep -q "benchmarks done" "$G/maml/maml_gpu.txt" 2>/dev/null && break; sleep 1; done
stamp "maml benchmarks done"
OUT=$G/train_step timeout 60 bash benchmarks/gpu/train_step.sh > "$G/train_step.log" 2>&1
stamp "train_step done"

# Phase 2: trainings, concurrently.
for c in 5w1s 5w5s; do
  ( timeout -s TERM "$PN_S" $PY -m metashot.cli train configs/protonet-omniglot-$c.yaml --quiet \
      --set train.device=cuda --set train.threads=1 --set train.checkpoint_every=500 \
      --set train.out_dir=runs/protonet-omniglot-$c-gpu > runs/protonet-$c-gpu.log 2>&1
    for w in 5 20; do
      timeout 60 $PY -m metashot.cli eval runs/protonet-omniglot-$c-gpu --device cuda --ways $w --episodes 1000 --json \
        > "$G/protonet-$c-eval-${w}way.json" 2>> runs/protonet-$c-gpu.log
    done ) &
done
OUT=$G/lake bash benchmarks/gpu/lake.sh > "$G/lake.log" 2>&1 &
OUT=$G/metalstm bash benchmarks/gpu/metalstm.sh > "$G/metalstm.log" 2>&1 &
wait
stamp "phase 2 done"
cat "$G"/maml/maml_bench.jsonl "$G"/train_step/train_step.jsonl "$G"/protonet-*.json 2>/dev/null
for f in "$G"/lake/*.json "$G"/metalstm/*.json "$G"/maml/*.json; do echo "$f: $(head -c 300 "$f")"; done
tail -n 3 runs/protonet-omniglot-5w1s-gpu/metrics.jsonl runs/protonet-omniglot-5w5s-gpu/metrics.jsonl
cp -r runs/protonet-omniglot-5w1s-gpu runs/protonet-omniglot-5w5s-gpu runs/protonet-*-gpu.log "$G"/ 2>/dev/null
cp -r runs/lake-*-gpu runs/*-omniglot-5w1s-gpu runs/metalstm-* "$G"/ 2>/dev/null
tar czf "$OUT/gpu_results.tar.gz" -C "$(dirname "$G")" "$(basename "$G")"
stamp "archived: $(du -h "$OUT/gpu_results.tar.gz" | cut -f1)"
