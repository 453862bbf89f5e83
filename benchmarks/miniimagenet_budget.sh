#!/usr/bin/env bash
# Same-budget comparison on the mini-ImageNet sample (../shared/data: 60 images per class, 64/16/20 classes):
# ProtoNet, MAML (second order) and Meta-LSTM, 5-way 1-shot and 5-shot, each meta-trained on STEPS episodes
# (one 5-way task with 15 queries per class per Adam step, lr 1e-3 constant, seed 0, no validation: the final
# weights are evaluated), then evaluated on the same 600 test episodes (seed 1234, 15 queries per class).
# Every learner is a 4-layer 32-filter conv net on 84x84 RGB (Meta-LSTM's and MAML's papers' learner; ProtoNet's
# paper used 64 filters and 30/20-way training, here cut to the shared setting). Each method keeps its own
# paper's inner loop: MAML alpha 0.01, 5 inner steps in training and 10 at test; Meta-LSTM 12 (1-shot) / 8
# (5-shot) learned updates, gradient clipping 0.25.
# Two jobs run at a time, one thread each. Logs go to logs/budget-mini/, JSON results to results/budget-mini/.
# Usage (repo root): METASHOT_DATA=../shared/data STEPS=600 bash benchmarks/miniimagenet_budget.sh
set -uo pipefail
STEPS=${STEPS:-600}
MS=${METASHOT:-metashot}
LOG=logs/budget-mini RES=results/budget-mini
mkdir -p "$LOG" "$RES"
common=(--quiet --set train.steps="$STEPS" --set train.val_every=0 --set train.threads=1 --set train.log_every=50
        --set train.seed=0 --set train.lr_schedule=constant --set train.lr=0.001)

job() {  # $1 = method, $2 = 5w1s | 5w5s, then config overrides
  local method=$1 setting=$2; shift 2
  local name=budget${STEPS}-mini-$method-$setting t0
  t0=$(date +%s)
  $MS train "configs/$method-miniimagenet-$setting.yaml" "${common[@]}" --set name="$name" "$@" \
    > "$LOG/$name-train.log" 2>&1
  echo "train wall $(( $(date +%s) - t0 )) s" >> "$LOG/$name-train.log"
  t0=$(date +%s)
  $MS eval "runs/$name" --episodes 600 --seed 1234 --queries 15 --threads 1 --json \
    > "$RES/$name.json" 2> "$LOG/$name-eval.err"
  echo "eval wall $(( $(date +%s) - t0 )) s" >> "$LOG/$name-train.log"
  echo "$name: $(cat "$RES/$name.json")"
}

protonet=(--set episodes.ways=5 --set episodes.queries=15
          --set "model.backbone_args={in_channels: 3, hidden: 32, out_channels: 32}")
maml=(--set episodes.meta_batch=1)

lane1() {
  job metalstm 5w1s
  job maml 5w1s "${maml[@]}"
  job protonet 5w5s "${protonet[@]}"
}
lane2() {
  job metalstm 5w5s
  job maml 5w5s "${maml[@]}"
  job protonet 5w1s "${protonet[@]}"
}
lane1 &
lane2 &
wait
