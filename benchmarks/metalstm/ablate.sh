#!/bin/bash
# Meta-LSTM on Omniglot 5-way 1-shot (issue 18, item 9): what limits it? Four variants of
# configs/metalstm-omniglot-5w1s-paper.yaml at the same budget (1,500 episodes, seed 0, one thread), compared
# on the validation split only (200 episodes, seed 777, at steps 500 / 1000 / 1500). Each run's metrics.jsonl is
# copied to results/metalstm/<name>-metrics.jsonl; benchmarks/results_tables.py makes the table.
#   paper:          the paper's gate initialisation (input-gate bias ~ U(-5, -4): initial learning rate 0.011)
#   gate01:         input-gate bias ~ U(-2.5, -2): initial learning rate about 0.1
#   gate01-q15:     gate01 with 15 queries per class in meta-training instead of 5
#   gate01-nobn:    gate01 with a learner without batch norm (the recorded run was stopped by hand after step
#                   750: validation at chance, 19.84, at step 500 and training loss at ln 5)
# Usage: METASHOT_DATA=../shared/data bash benchmarks/metalstm/ablate.sh      (about 6 min per run on one core)
set -euo pipefail
C=configs/metalstm-omniglot-5w1s-paper.yaml
COMMON=(--quiet --set train.steps=1500 --set train.val_every=500 --set train.threads=1)
GATE="model.algorithm_args.input_bias_init=[-2.5, -2.0]"
mkdir -p results/metalstm
run() {
  name=$1; shift
  metashot train "$C" "${COMMON[@]}" --set name="$name" "$@"
  cp "runs/$name/metrics.jsonl" "results/metalstm/$name-metrics.jsonl"
}
run mlstm-abl-paper
run mlstm-abl-gate01 --set "$GATE"
run mlstm-abl-gate01-q15 --set "$GATE" --set episodes.queries=15
run mlstm-abl-gate01-nobn --set "$GATE" --set model.backbone_args.batch_norm=false
