#!/usr/bin/env bash
# GPU run: paper-protocol ProtoNet trainings on Omniglot (1-shot and 5-shot models, 10,000 episodes each, run
# concurrently on one GPU), writing the run folders as one archive under $OUT.
# Usage (repo root): METASHOT_DATA=<data> OUT=<dir> bash benchmarks/gpu/protonet.sh
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PY:-python3}
mkdir -p "$OUT" runs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
for c in 5w1s 5w5s; do
  ( /usr/bin/time -f "$c wall %e s" $PY -m metashot.cli train configs/protonet-omniglot-$c.yaml --quiet \
      --set train.device=cuda --set train.out_dir=runs/protonet-omniglot-$c > runs/train-$c.log 2>&1 ) &
done
wait
cat runs/train-*.log
tar czf "$OUT/protonet-runs.tar.gz" runs/protonet-omniglot-5w1s runs/protonet-omniglot-5w5s runs/train-*.log
