#!/usr/bin/env bash
# Lake's benchmark with model selection on validation data only (issue 18).
#
# Every candidate below was fixed before any of them was scored on validation (they are the variants earlier
# sessions had scored on the official test runs). Each trains with its config's seed on background data only
# (images_background minus the five LAKE_VAL_ALPHABETS, or a minimal set) and is scored on the 50 validation
# runs (`metashot lake --val`, 1000 trials from the held-out background alphabets). The choice rule, fixed in
# advance: the lowest validation error; on a tie, the candidate with fewer training episodes. Only the chosen
# model of each training set is then evaluated on Lake's 20 official runs (benchmarks/lake/choose.py).
#
# Usage: bash benchmarks/lake/select.sh QUEUE   (QUEUE = full-a | full-b | small1 | small2; run queues side by
# side, one core each). Appends one JSON line per candidate to results/lake/val.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=results/lake
mkdir -p "$OUT" runs
export METASHOT_QUIET=1

train() {  # train CONFIG [--set ...]; fresh run folder
  local cfg=$1; shift
  local name; name=$(basename "$cfg" .yaml)
  rm -rf "runs/$name"
  /usr/bin/time -f "%e" -o "runs/$name.seconds" "$PY" -m metashot.cli train "$cfg" "$@" > "runs/$name.log" 2>&1
}

continue_to() {  # continue_to RUN NEW STEPS: copy a finished run and resume it to STEPS (exact; see RESULTS)
  rm -rf "runs/$2"; cp -r "runs/$1" "runs/$2"
  /usr/bin/time -f "%e" -o "runs/$2.seconds" "$PY" -m metashot.cli train --resume "runs/$2" \
    --set "train.steps=$3" > "runs/$2.log" 2>&1
}

score() {  # score RUN CANDIDATE TRAINSET EPISODES
  local res
  res=$("$PY" -m metashot.cli lake "runs/$1/final" --val --json --threads 1)
  "$PY" - "$res" "$2" "$3" "$4" "$(cat "runs/$1.seconds")" >> "$OUT/val.jsonl" <<'PYEOF'
import json, sys
r = json.loads(sys.argv[1])
print(json.dumps({"candidate": sys.argv[2], "train_set": sys.argv[3], "episodes": int(sys.argv[4]),
                  "val_error": r["error"], "val_trials": r["trials"], "val_runs": r["runs"],
                  "wrong": round(r["error"] * r["trials"] / 100), "checkpoint": r["checkpoint"],
                  "train_seconds": float(sys.argv[5])}))
PYEOF
}

case "${1:?queue: full-a | full-b | small1 | small2}" in
  full-a)
    train configs/lake-protonet-background-60way.yaml
    score lake-protonet-background-60way 60way background_train 4000
    train configs/lake-protonet-background-rot.yaml
    score lake-protonet-background-rot rotations background_train 6000 ;;
  full-b)
    train configs/lake-protonet-background.yaml --set train.steps=2000
    mv runs/lake-protonet-background runs/lake-protonet-background-2000
    mv runs/lake-protonet-background.seconds runs/lake-protonet-background-2000.seconds
    score lake-protonet-background-2000 20way-2000 background_train 2000
    continue_to lake-protonet-background-2000 lake-protonet-background-3000 3000
    score lake-protonet-background-3000 20way-3000 background_train 3000
    train configs/lake-protonet-background-long.yaml
    score lake-protonet-background-long 20way-long background_train 4000
    train configs/lake-protonet-background-alphabet.yaml
    score lake-protonet-background-alphabet within-alphabet background_train 4000 ;;
  small1|small2)
    s=$1
    train configs/lake-protonet-$s.yaml
    score lake-protonet-$s protonet-1000 background_$s 1000
    continue_to lake-protonet-$s lake-protonet-$s-1500 1500
    score lake-protonet-$s-1500 protonet-1500 background_$s 1500
    train configs/lake-protonet-$s-alphabet.yaml
    score lake-protonet-$s-alphabet within-alphabet background_$s 1000
    train configs/lake-protonet-$s-rot.yaml
    score lake-protonet-$s-rot rotations background_$s 2000
    train configs/lake-matching-$s.yaml
    score lake-matching-$s matching background_$s 1000 ;;
  *) echo "unknown queue $1" >&2; exit 2 ;;
esac
