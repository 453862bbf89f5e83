"""Markdown tables of few-shot heads from heads_eval.py records: one row per (backbone, input size, head),
columns dataset x shots x {balanced, Dirichlet}, mean +- 95% CI; a cell below the same backbone's inductive
`ncm` by more than its CI is marked with a down arrow, and one above it by more than its CI with an up arrow.

    python benchmarks/photos/heads_table.py results/photos/heads_val.jsonl
    python benchmarks/photos/heads_table.py results/photos/heads_test.jsonl \
        --models tf_efficientnet_lite0+tf_efficientnet_lite1
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def head_name(name: str, args: dict) -> str:
    return name + (":" + ",".join(f"{k}={v}" for k, v in sorted(args.items())) if args else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records")
    ap.add_argument("--models", help="only this backbone")
    a = ap.parse_args()
    rows: dict[tuple, dict] = defaultdict(dict)
    cols: list[tuple] = []
    for line in open(a.records):
        r = json.loads(line)
        if a.models and r["models"] != a.models:
            continue
        col = (r["dataset"], r["shots"], r["imbalance"])
        if col not in cols:
            cols.append(col)
        key = (r["models"], r["input_size"], head_name(r["head"], r["head_args"]))
        rows[key][col] = (r["acc"], r["ci95"])
    cols.sort(key=lambda c: (c[0], c[1], c[2] is not None))
    names = [f"{d.split('/')[0]} {s}-shot {'bal.' if i is None else f'Dir({i:g})'}" for d, s, i in cols]
    head = "| backbone | px | head | " + " | ".join(names) + " | mean |"
    print(head)
    print("|" + "---|" * (len(cols) + 4))
    for key in sorted(rows, key=lambda k: (k[0], k[1], k[2] != "ncm", k[2])):
        ref = rows.get((key[0], key[1], "ncm"), {})
        cells, accs = [], []
        for c in cols:
            if c not in rows[key]:
                cells.append("")
                continue
            acc, ci = rows[key][c]
            accs.append(acc)
            mark = ""
            if c in ref and key[2] != "ncm":
                racc, rci = ref[c]
                if acc + ci < racc - rci:
                    mark = " ↓"
                elif acc - ci > racc + rci:
                    mark = " ↑"
            cells.append(f"{acc:.2f} +- {ci:.2f}{mark}")
        mean = f"{sum(accs) / len(accs):.2f}" if len(accs) == len(cols) else ""
        models = key[0].replace("tf_efficientnet_", "")
        print(f"| {models} | {key[1]} | {key[2]} | " + " | ".join(cells) + f" | {mean} |")


if __name__ == "__main__":
    main()
