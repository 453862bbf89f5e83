"""The choice of the `photos` default (backbone + head), from VALIDATION records only (issue 25 item 6).

The rule, written and committed before any test figure of a transductive head was computed:

1. Candidates: every (backbone, input size, head with its arguments) with all eight validation cells in the
   records (mini-ImageNet val and Flowers-102 val; 1 and 5 shots; balanced and Dirichlet(2) queries; 5-way,
   75 queries, 600 episodes, seed 777; benchmarks/photos/heads_eval.py --split val).
2. Keep a candidate only if none of its eight cells is more than 0.3 points below inductive SimpleShot (the
   `ncm` head) on the same backbone and input size.
3. Keep a candidate only if its backbone's fit on 25 + predict on 75 photos (decoding included; median of
   benchmarks/photos/speed.py runs, in results/photos/speed_candidates.jsonl) is at most 3 s on this CPU.
4. Choose the highest mean of the eight cells; ties (within 0.05 points) go to the faster backbone, then to
   the inductive or cheaper head (the order of the list below).

    python benchmarks/photos/choose_head.py results/photos/heads_val.jsonl \
        results/photos/speed_candidates.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

CELLS = [(d, s, i) for d in ("mini_imagenet/val", "flowers102/val") for s in (1, 5) for i in (None, 2.0)]
COST = ["ncm", "finetune", "soft_kmeans", "bd_cspn", "laplacianshot", "pt_map", "transductive_finetune",
        "tim", "alpha_tim"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", help="validation JSONL of heads_eval.py")
    ap.add_argument("speed", help="JSONL of speed.py runs per backbone (models, input_size, fit_predict_s)")
    a = ap.parse_args()
    cells: dict[tuple, dict] = defaultdict(dict)
    for line in open(a.records):
        r = json.loads(line)
        if not r["dataset"].endswith("/val"):
            raise SystemExit(f"{a.records}: a non-validation record ({r['dataset']}); the choice reads "
                             f"val only")
        key = (r["models"], r["input_size"], r["head"], json.dumps(r["head_args"], sort_keys=True))
        cells[key][(r["dataset"], r["shots"], r["imbalance"])] = r["acc"]
    speed: dict[tuple, float] = {}
    for line in open(a.speed):
        r = json.loads(line)
        speed[(r["models"], r["input_size"])] = float(r["fit_predict_s"])
    rows = []
    for key, c in cells.items():
        if any(cell not in c for cell in CELLS):
            continue
        ref = cells.get((key[0], key[1], "ncm", "{}"))
        if ref is None or any(cell not in ref for cell in CELLS):
            continue
        worst = min(c[cell] - ref[cell] for cell in CELLS)
        s = speed.get((key[0], key[1]))
        mean = sum(c[cell] for cell in CELLS) / len(CELLS)
        ok = worst >= -0.3 and s is not None and s <= 3.0
        rows.append({"models": key[0], "input_size": key[1], "head": key[2], "head_args": json.loads(key[3]),
                     "mean": round(mean, 3), "worst_vs_ncm": round(worst, 2), "fit_predict_s": s,
                     "eligible": ok})
    eligible = [r for r in rows if r["eligible"]]
    if not eligible:
        raise SystemExit("no eligible candidate")
    best = max(r["mean"] for r in eligible)
    tied = [r for r in eligible if r["mean"] >= best - 0.05]
    tied.sort(key=lambda r: (r["fit_predict_s"], COST.index(r["head"]) if r["head"] in COST else 99))
    for r in sorted(rows, key=lambda r: -r["mean"]):
        print(json.dumps(r))
    print(json.dumps({"chosen": tied[0]}))


if __name__ == "__main__":
    main()
