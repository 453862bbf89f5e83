#!/usr/bin/env bash
# GPU run (one H100, under 2 minutes): Meta-LSTM (Ravi & Larochelle 2017).
#  1. the bundled-model recipe: `metashot train configs/metalstm-omniglot-5w1s.yaml` on CUDA, then
#     `metashot eval` on 1000 Omniglot test episodes (seed 1234);
#  2. concurrently, short runs of the paper-setting mini-ImageNet configs on the 60-images-per-class sample
#     (1-shot: 12 inner updates, 5-shot: 8; 1,000 episodes each instead of 75,000 / 50,000), each evaluated on
#     600 test episodes (seed 1234).
# Every job is cut by a shared deadline so the whole script stays under 2 minutes; a cut training still leaves
# its checkpoint. Run folders, logs and eval JSON are copied under $OUT.
# Usage (repo root): METASHOT_DATA=<data> OUT=<dir> bash benchmarks/gpu/metalstm.sh
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PY:-python3}
START=$(date +%s)
DEADLINE=$((START + 112))
left() { local l=$((DEADLINE - $(date +%s))); echo $((l > 1 ? l : 1)); }
mkdir -p "$OUT" runs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

omniglot() {
  local r=runs/metalstm-omniglot-5w1s t0=$(date +%s)
  timeout -s INT $(( $(left) - 35 )) $PY -m metashot.cli train configs/metalstm-omniglot-5w1s.yaml --quiet \
      --set train.device=cuda --set train.out_dir=$r > runs/metalstm-omniglot-train.log 2>&1
  echo "omniglot train wall $(( $(date +%s) - t0 )) s" >> runs/metalstm-omniglot-train.log
  timeout $(left) $PY -m metashot.cli eval $r --device cuda --episodes 1000 --seed 1234 --json \
    > runs/metalstm-omniglot-eval.json 2> runs/metalstm-omniglot-eval.err
}

mini() {  # $1 = 5w1s | 5w5s
  local r=runs/metalstm-miniimagenet-$1-sample t0=$(date +%s)
  timeout -s INT $(( $(left) - 35 )) $PY -m metashot.cli train configs/metalstm-miniimagenet-$1.yaml --quiet \
      --set train.device=cuda --set train.steps=1000 --set train.val_every=0 --set train.out_dir=$r \
      > runs/metalstm-mini-$1-train.log 2>&1
  echo "mini-imagenet $1 train wall $(( $(date +%s) - t0 )) s" >> runs/metalstm-mini-$1-train.log
  timeout $(left) $PY -m metashot.cli eval $r --device cuda --episodes 600 --seed 1234 --json \
    > runs/metalstm-mini-$1-eval.json 2> runs/metalstm-mini-$1-eval.err
}

omniglot &
mini 5w1s &
mini 5w5s &
wait
echo "total wall $(( $(date +%s) - START )) s" | tee -a "$OUT/gpu.txt"
for f in runs/metalstm-*-train.log runs/metalstm-*-eval.json runs/metalstm-*-eval.err; do
  echo "== $f"; tail -n 5 "$f"
done
cp -r runs/metalstm-omniglot-5w1s runs/metalstm-miniimagenet-5w1s-sample runs/metalstm-miniimagenet-5w5s-sample \
  runs/metalstm-*.log runs/metalstm-*.json runs/metalstm-*.err "$OUT"/ 2>/dev/null
ls -R "$OUT" | head -50
