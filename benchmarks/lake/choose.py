"""Choose one Lake model per training set on validation runs only, then evaluate it ONCE on Lake's 20 runs.

Reads the candidates' validation scores (``results/lake/val.jsonl``, from ``benchmarks/lake/select.sh``),
applies the rule fixed before the runs (lowest validation error; on a tie, fewer training episodes), evaluates
only each chosen checkpoint on the official runs and appends one JSON line per training set to
``results/lake/test.jsonl`` with exact binomial 95% intervals. A training set that already has a test line is
not evaluated again (``--force`` to override is deliberately absent).

Usage: python benchmarks/lake/choose.py [--root RUN_PARENT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from metashot.data.lake_runs import load_lake_runs
from metashot.lake import evaluate_checkpoint
from metashot.stats import binomial_ci

RESULTS = Path(__file__).resolve().parents[2] / "results" / "lake"


def choose(lines: list[dict]) -> dict[str, dict]:
    """Training set -> its chosen candidate (lowest ``wrong``, then fewest ``episodes``)."""
    best: dict[str, dict] = {}
    for c in lines:
        b = best.get(c["train_set"])
        if b is None or (c["wrong"], c["episodes"]) < (b["wrong"], b["episodes"]):
            best[c["train_set"]] = c
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=".", help="folder the checkpoints' runs/... paths are relative to")
    a = p.parse_args()
    lines = [json.loads(x) for x in (RESULTS / "val.jsonl").read_text().splitlines() if x.strip()]
    done_path = RESULTS / "test.jsonl"
    done = {json.loads(x)["train_set"] for x in done_path.read_text().splitlines() if x.strip()} \
        if done_path.exists() else set()
    runs = load_lake_runs()
    for train_set, c in sorted(choose(lines).items()):
        if train_set in done:
            print(f"{train_set}: already evaluated on the test runs; not again")
            continue
        res = evaluate_checkpoint(str(Path(a.root) / c["checkpoint"]), runs)
        wrong = round(res["error"] * res["trials"] / 100)
        lo, hi = binomial_ci(wrong, res["trials"])
        vlo, vhi = binomial_ci(c["wrong"], c["val_trials"])
        line = {"train_set": train_set, "chosen": c["candidate"], "checkpoint": c["checkpoint"],
                "val_error": c["val_error"], "val_ci95": [round(100 * vlo, 2), round(100 * vhi, 2)],
                "test_error": res["error"], "test_wrong": wrong, "test_trials": res["trials"],
                "test_ci95": [round(100 * lo, 2), round(100 * hi, 2)], "run_errors": res["run_errors"]}
        with done_path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line))


if __name__ == "__main__":
    main()
