"""Markdown tables of the text results (the JSON lines written by episodic.py and fullway.py).

    python benchmarks/text/tables.py results/text/episodic.jsonl results/text/episodic_gradient.jsonl \
        results/text/fullway.jsonl

Episodic: per (method, dataset, shots), the mean over the folds present of the per-fold accuracy (600 episodes
each) and the 95% CI of all pooled episodes' accuracies, recomputed from the per-fold mean and CI (the pooled
variance is the mean per-fold variance plus the variance of the fold means). A cell with fewer than 5 folds
says how many.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict

DATASETS = ("banking77", "clinc150", "hwu64")
PUBLISHED = {  # full-way accuracy, BANKING77 / CLINC150 / HWU64, as quoted in issue 7
    ("RoBERTa classifier (published)", 5): (74.04, 87.99, 75.56),
    ("USE+ConveRT (published)", 5): (77.75, 90.49, 80.01),
    ("CPFT (published)", 5): (80.86, 92.34, 82.03),
    ("CPFT (published)", 10): (87.20, 94.18, 87.13),
}


def pooled(rows: list[dict]) -> tuple[float, float, int]:
    means = [r["acc"] for r in rows]
    n = [r["episodes"] for r in rows]
    var = [(r["ci95"] / 1.96) ** 2 * r["episodes"] for r in rows]  # per-fold population variance
    total = sum(n)
    mu = sum(m * k for m, k in zip(means, n, strict=True)) / total
    v = sum((vv + (m - mu) ** 2) * k for vv, m, k in zip(var, means, n, strict=True)) / total
    return sum(means) / len(means), 1.96 * math.sqrt(v / total), len(rows)


def main(paths: list[str]) -> None:
    recs = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    epi = defaultdict(list)
    full = {}
    oos = []
    for r in recs:
        if r.get("summary"):
            continue
        if r.get("protocol") == "fullway":
            full[(r["method"], r["shots"], r["dataset"])] = r["acc"]
        elif r.get("protocol") == "oos":
            oos.append(r)
        elif "fold" in r:
            epi[(r["method"], r["shots"], r["dataset"])].append(r)
    if epi:
        print("| method | shots | " + " | ".join(DATASETS) + " |")
        print("|---|---|" + "---|" * len(DATASETS))
        for method, shots in sorted({(m, s) for m, s, _ in epi}, key=lambda x: (x[1], x[0])):
            cells = []
            for d in DATASETS:
                rows = epi.get((method, shots, d))
                if not rows:
                    cells.append("-")
                    continue
                mean, ci, k = pooled(rows)
                cells.append(f"{mean:.2f} ± {ci:.2f}" + ("" if k == 5 else f" ({k} folds)"))
            print(f"| {method} | {shots} | " + " | ".join(cells) + " |")
        print()
    if full:
        print("| method | K | " + " | ".join(DATASETS) + " |")
        print("|---|---|" + "---|" * len(DATASETS))
        for method, shots in sorted({(m, s) for m, s, _ in full}, key=lambda x: (x[1], x[0])):
            cells = [f"{full[(method, shots, d)]:.2f}" if (method, shots, d) in full else "-"
                     for d in DATASETS]
            print(f"| {method} | {shots} | " + " | ".join(cells) + " |")
        for (name, shots), vals in PUBLISHED.items():
            print(f"| {name} | {shots} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
        print()
    if oos:
        print("| method | K | threshold (from val) | in-scope acc | OOS recall | OOS precision |")
        print("|---|---|---|---|---|---|")
        for r in sorted(oos, key=lambda r: (r["shots"], r["method"])):
            print(f"| {r['method']} | {r['shots']} | {r['threshold']:.3f} | {r['in_scope_acc']:.2f} | "
                  f"{r['oos_recall']:.2f} | {r['oos_precision']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
