"""Medians and speed ratios from the JSON lines of benchmarks/maml_vs_l2l.sh; prints one JSON object.

For each config and order: the median tasks/s of every variant over the rounds, and the best metashot
variant's median over learn2learn's median.

    python benchmarks/maml_ratio.py out.jsonl
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


def summarise(lines: list[str]) -> dict:
    runs: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        key = (d["config"], "first" if d["first_order"] else "second")
        if d["benchmark"] == "maml-learn2learn":
            variant = f"learn2learn x{d['threads']} threads"
        else:
            variant = f"metashot {d['path']} {d.get('task_workers', 1)} workers x{d['threads']} threads"
        runs[key][variant].append(d["tasks_per_s"])
    out = {}
    for (config, order), variants in sorted(runs.items()):
        med = {v: round(statistics.median(x), 2) for v, x in variants.items()}
        row: dict = {"median_tasks_per_s": med, "runs": {v: x for v, x in variants.items()}}
        peer = [v for v in med if v.startswith("learn2learn")]
        ours = [v for v in med if v.startswith("metashot")]
        if peer and ours:
            best = max(ours, key=med.get)
            row.update(best=best, ratio_vs_learn2learn=round(med[best] / med[peer[0]], 2))
        out[f"{config}-{order}-order"] = row
    return out


if __name__ == "__main__":
    print(json.dumps(summarise(open(sys.argv[1]).read().splitlines()), indent=1))
