#!/usr/bin/env bash
# GPU run for the MAML family (issue 3): benchmarks/maml.py on configs A and B, loop and vectorized paths,
# second and first order (8 JSON lines in $OUT/maml_bench.jsonl, under 60 s), then a MAML Omniglot 5-way 1-shot
# training with the paper's settings (configs/maml-omniglot-5w1s.yaml) capped at TRAIN_S seconds (on the cap
# the Trainer checkpoints last/ on SIGTERM), evaluated on 1000 episodes of the Vinyals test split.
# Usage (repo root): METASHOT_DATA=<data with omniglot/> OUT=<dir> bash benchmarks/gpu/maml.sh
# Writes: $OUT/maml_bench.jsonl, $OUT/maml-omniglot-5w1s-gpu/ (config.yaml, metrics.jsonl, summary.json and the
# final/ or last/ checkpoint), $OUT/maml-omniglot-5w1s-gpu.json (test acc +- ci95), $OUT/maml_gpu.txt.
# Total < 2 minutes on an H100 (DEVICE=cpu TRAIN_S=10 ITERS=1: a smoke test of the chain).
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PY:-python3}
TRAIN_S=${TRAIN_S:-35}
ITERS=${ITERS:-10}
DEVICE=${DEVICE:-cuda}
: "${OUT:?set OUT}"
export METASHOT_CACHE=${METASHOT_CACHE:-$PWD/cache/stores}
mkdir -p "$OUT"
t0=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } \
  | tee "$OUT/maml_gpu.txt"
# Decode the Omniglot stores in the background while the benchmarks (synthetic inputs) run.
( for s in train test; do $PY -c "from metashot.data import load_split; load_split('omniglot', '$s')"; done ) \
  > "$OUT/maml_stores.log" 2>&1 &
stores=$!
# One process for the 8 runs (A and B x vectorized/loop x second/first order): CUDA starts once.
timeout 60 $PY benchmarks/maml.py --all --device "$DEVICE" --iters "$ITERS" \
  >> "$OUT/maml_bench.jsonl" 2>> "$OUT/maml_bench.err" \
  || echo "{\"error\": \"benchmarks/maml.py --all failed or timed out (exit $?); see maml_bench.err\"}" \
  >> "$OUT/maml_bench.jsonl"
echo "benchmarks done after $(( $(date +%s) - t0 )) s" | tee -a "$OUT/maml_gpu.txt"
wait $stores
run="$OUT/maml-omniglot-5w1s-gpu"
timeout -s TERM "$TRAIN_S" $PY -m metashot.cli train configs/maml-omniglot-5w1s.yaml --quiet \
  --set train.device="$DEVICE" --set train.threads=2 --set train.val_every=0 --set train.log_every=100 \
  --set train.out_dir="$run" > "$OUT/maml-omniglot-5w1s-gpu.log" 2>&1
echo "training stopped after $(( $(date +%s) - t0 )) s: $(tail -n 1 "$run/metrics.jsonl" 2>/dev/null)" \
  | tee -a "$OUT/maml_gpu.txt"
timeout 20 $PY -m metashot.cli eval "$run" --device "$DEVICE" --episodes "${EVAL_EPISODES:-1000}" --json \
  > "$OUT/maml-omniglot-5w1s-gpu.json" 2>> "$OUT/maml-omniglot-5w1s-gpu.log"
cat "$OUT/maml-omniglot-5w1s-gpu.json"
echo "total $(( $(date +%s) - t0 )) s" | tee -a "$OUT/maml_gpu.txt"
