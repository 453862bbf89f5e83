#!/usr/bin/env bash
# Same-budget comparison on the mini-ImageNet sample (../shared/data: 60 images per class, 64/16/20 classes):
# every method meta-trained (or pre-trained) for STEPS steps of one 5-way episode with 15 queries per class
# (80 images for 1-shot, 100 for 5-shot; Baseline/Baseline++: 40 classes x 2 images), Adam lr 1e-3 constant,
# seed 0, no validation (the final weights are evaluated), then evaluated on the same 600 test episodes (seed
# 1234, 15 queries per class). Every network is a 4-layer 32-filter conv net on 84x84 RGB (Meta-LSTM's and
# MAML's papers' learner; the metric papers used 64 filters, cut here to the shared setting). Each method keeps
# its own paper's other settings: MAML alpha 0.01, 5 inner steps in training and 10 at test; Meta-LSTM 12
# (1-shot) / 8 (5-shot) learned updates, clipping 0.25; Matching Nets with full context embeddings; Relation
# Nets' relation module; Siamese, Baseline and Baseline++ train once and are evaluated at 1 and 5 shots.
#   group "gradient": ProtoNet, MAML (second order) and Meta-LSTM, 5-way 1-shot and 5-shot (issue 5)
#   group "metric":   Matching Nets (FCE), Relation Nets, Siamese, Baseline, Baseline++ (issue 4)
#   group "baseline": Baseline alone (the metric group's last job, for a rerun on one core)
# Two jobs run at a time, one thread each. Logs go to logs/budget-mini/, JSON results to results/budget-mini/.
# Usage (repo root): METASHOT_DATA=../shared/data STEPS=600 bash benchmarks/miniimagenet_budget.sh [gradient|metric]
set -uo pipefail
GROUP=${1:-gradient}
STEPS=${STEPS:-600}
MS=${METASHOT:-metashot}
LOG=logs/budget-mini RES=results/budget-mini
mkdir -p "$LOG" "$RES"
common=(--quiet --set train.steps="$STEPS" --set train.val_every=0 --set train.threads=1 --set train.log_every=50
        --set train.seed=0 --set train.lr_schedule=constant --set train.lr=0.001)

evaluate() {  # $1 = run name, $2 = shots
  local t0
  t0=$(date +%s)
  $MS eval "runs/$1" --episodes 600 --seed 1234 --queries 15 --shots "$2" --threads 1 --json \
    > "$RES/$1-${2}shot.json" 2> "$LOG/$1-eval.err"
  echo "eval ($2-shot) wall $(( $(date +%s) - t0 )) s" >> "$LOG/$1-train.log"
  echo "$1 $2-shot: $(cat "$RES/$1-${2}shot.json")"
}

train() {  # $1 = config name, $2 = run name, then config overrides
  local config=$1 name=$2 t0
  shift 2
  t0=$(date +%s)
  if ! $MS train "configs/$config.yaml" "${common[@]}" --set name="$name" "$@" > "$LOG/$name-train.log" 2>&1; then
    echo "$name: training failed, see $LOG/$name-train.log" >&2
    return 1
  fi
  echo "train wall $(( $(date +%s) - t0 )) s" >> "$LOG/$name-train.log"
}

job() {  # $1 = method, $2 = 5w1s | 5w5s, then config overrides: train on that setting, evaluate on it
  local method=$1 setting=$2 name
  shift 2
  name=budget${STEPS}-mini-$method-$setting
  train "$method-miniimagenet-$setting" "$name" "$@" && evaluate "$name" "${setting:2:1}"  # 5w1s -> 1
}

shared_job() {  # $1 = config (trained once), then overrides: evaluate at 1 and 5 shots
  local config=$1 name
  shift
  name=budget${STEPS}-$config
  train "$config" "$name" "$@" || return 1
  evaluate "$name" 1
  evaluate "$name" 5
}

conv32=(--set "model.backbone_args={in_channels: 3, hidden: 32, out_channels: 32}")
maps32=(--set "model.backbone_args={in_channels: 3, hidden: 32, depth: 4, pools: 2}")
episode5=(--set episodes.ways=5 --set episodes.queries=15 --set episodes.meta_batch=1)

case $GROUP in
  gradient)
    ( job metalstm 5w1s; job maml 5w1s --set episodes.meta_batch=1; job protonet 5w5s "${episode5[@]}" "${conv32[@]}" ) &
    ( job metalstm 5w5s; job maml 5w5s --set episodes.meta_batch=1; job protonet 5w1s "${episode5[@]}" "${conv32[@]}" ) &
    ;;
  metric)
    ( job matching-fce 5w1s "${conv32[@]}"; job relation 5w1s "${episode5[@]}" "${maps32[@]}"
      shared_job siamese-miniimagenet "${conv32[@]}"; shared_job baseline-miniimagenet "${conv32[@]}" ) &
    ( job matching-fce 5w5s "${conv32[@]}"; job relation 5w5s "${episode5[@]}" "${maps32[@]}"
      shared_job baselinepp-miniimagenet "${conv32[@]}" ) &
    ;;
  baseline)
    shared_job baseline-miniimagenet "${conv32[@]}" &
    ;;
  *) echo "usage: $0 [gradient|metric|baseline]" >&2; exit 2 ;;
esac
wait
