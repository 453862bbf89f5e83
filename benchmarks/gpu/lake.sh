#!/usr/bin/env bash
# GPU run for Lake's 20-way within-alphabet one-shot benchmark (metashot lake): the eight configs/lake-*.yaml
# models (ProtoNet, Koch-style Siamese, distorted Matching Nets; images_background, _small1, _small2) trained at once
# on one GPU with more steps than the CPU presets, each capped at TRAIN_S seconds (on the cap the Trainer
# checkpoints last/ on SIGTERM and stops), then each evaluated on Lake's 20 runs. Alongside, Matching Nets,
# Relation Nets and the contrastive Siamese net on the Vinyals split (Omniglot 5-way 1-shot, 1000 episodes).
# Usage (repo root): METASHOT_DATA=<data with omniglot/> OUT=<dir> bash benchmarks/gpu/lake.sh
# Writes: $OUT/lake-<model>.json (error in percent), $OUT/<omniglot preset>.json (acc +- ci95),
# $OUT/lake-runs.tar.gz (runs/*-gpu: config.yaml,
# metrics.jsonl, summary.json, final/ or last/ checkpoint folders), $OUT/gpu.txt. Total < 2 minutes on an H100.
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PY:-python3}
TRAIN_S=${TRAIN_S:-65}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu TRAIN_S=10: a smoke test of the whole chain
: "${OUT:?set OUT}"
export METASHOT_CACHE=${METASHOT_CACHE:-$PWD/cache/stores}
mkdir -p "$OUT" runs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
t0=$(date +%s)
# Decode the stores once, in parallel, before the trainings start (cache writes are atomic).
for s in background background_small1 background_small2 train test; do
  $PY -c "from metashot.data import load_split; load_split('omniglot', '$s')" &
done
wait
echo "stores ready after $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu.txt"
MODELS=${MODELS:-"protonet-background siamese-background protonet-small1 protonet-small2 siamese-small1 siamese-small2
  matching-small1 matching-small2"}
for m in $MODELS; do
  case $m in *background) steps=8000; lr_step=2000 ;; *) steps=4000; lr_step=1000 ;; esac
  ( timeout -s TERM "$TRAIN_S" $PY -m metashot.cli train configs/lake-$m.yaml --quiet --set train.device=$DEVICE \
      --set train.threads=1 --set train.steps=$steps --set train.lr_step=$lr_step --set train.log_every=200 \
      --set train.out_dir=runs/lake-$m-gpu > runs/lake-$m-gpu.log 2>&1 ) &
done
# Metric family on the Vinyals split (Omniglot 5-way 1-shot), same cap, evaluated on 1000 test episodes.
OMNI=${OMNI:-"matching-omniglot-5w1s relation-omniglot-5w1s siamese-omniglot-5w1s"}
for m in $OMNI; do
  ( timeout -s TERM "$TRAIN_S" $PY -m metashot.cli train configs/$m.yaml --quiet --set train.device=$DEVICE \
      --set train.threads=1 --set train.val_every=0 --set train.log_every=200 --set train.out_dir=runs/$m-gpu \
      > runs/$m-gpu.log 2>&1 ) &
done
wait
echo "trainings done after $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu.txt"
for m in $MODELS; do
  ( $PY -m metashot.cli lake runs/lake-$m-gpu --device $DEVICE --json > "$OUT/lake-$m.json" 2> "runs/lake-$m-eval.log"
    echo "$m: $(cat "$OUT/lake-$m.json" | head -c 120)" ) &
done
for m in $OMNI; do
  ( $PY -m metashot.cli eval runs/$m-gpu --device $DEVICE --episodes 1000 --json > "$OUT/$m.json" \
      2> "runs/$m-eval.log"; echo "$m: $(head -c 120 "$OUT/$m.json")" ) &
done
wait
for m in $MODELS; do tail -n 2 runs/lake-$m-gpu/metrics.jsonl 2>/dev/null | head -c 400; echo; done
echo "total $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu.txt"
tar czf "$OUT/lake-runs.tar.gz" runs/lake-*-gpu runs/lake-*-eval.log $(for m in $OMNI; do echo runs/$m-gpu; done)
