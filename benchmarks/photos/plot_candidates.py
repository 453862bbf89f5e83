"""Plot the photo-model candidates: mean validation accuracy against network time, with the speed budget.

Reads results/photos/selection.jsonl (validation accuracies; candidates with all four figures, pt-supc head)
and results/photos/candidates_speed.jsonl (network seconds for 25 + 75 images); writes a PNG.

    python benchmarks/photos/plot_candidates.py --out docs/figures/photos_candidates.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--selection", default="results/photos/selection.jsonl")
    ap.add_argument("--speed", default="results/photos/candidates_speed.jsonl")
    ap.add_argument("--budget", type=float, default=2.5)
    ap.add_argument("--out", default="docs/figures/photos_candidates.png")
    a = ap.parse_args()
    acc: dict[tuple[str, int], list[float]] = {}
    for line in Path(a.selection).read_text().splitlines():
        r = json.loads(line)
        if r["head"] == "pt-supc":
            acc.setdefault((r["model"], r["input_size"]), []).append(r["acc"])
    speed = {(r["model"], r["input_size"]): r["network_s_25_plus_75"]
             for r in map(json.loads, Path(a.speed).read_text().splitlines())}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (model, size), v in sorted(acc.items()):
        if len(v) != 4 or (model, size) not in speed:
            continue
        short = model.replace("tf_efficientnet_", "")
        x, y = speed[(model, size)], sum(v) / 4
        ax.scatter(x, y, s=40, color="C0" if "+" in model else ("C1" if "lite0" in model else "C2"))
        ax.annotate(f"{short} {size}px", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axvline(a.budget, color="grey", ls="--", lw=1)
    ax.text(a.budget, ax.get_ylim()[0], f" budget {a.budget} s", color="grey", fontsize=8, va="bottom")
    ax.set_xlabel("network time for fit 25 + predict 75 images, s (2-core CPU)")
    ax.set_ylabel("mean validation accuracy, %")
    ax.set_title("photo-model candidates: mean of mini-ImageNet val and Flowers val, 5-way 1 and 5 shots\n"
                 "(SimpleShot head with power transform and support centring)", fontsize=9)
    ax.set_xlim(right=ax.get_xlim()[1] + 0.6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(a.out)


if __name__ == "__main__":
    main()
