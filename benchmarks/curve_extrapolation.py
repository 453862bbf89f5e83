"""How many meta-steps would a run need to reach a target accuracy, from the slope of its validation curve?

Reads the ``val_acc`` points of a run's ``metrics.jsonl``, fits ``val_acc = a + b * log10(step)`` by least
squares on the last ``--points`` validation points (the curve's recent, slower part); solves for the target.
The log-linear form is an assumption (learning curves usually flatten faster than that), so the result is a
lower bound on the steps needed, not a prediction; a flattening curve gives a slope near zero and a huge
figure. Prints one JSON object.

    python benchmarks/curve_extrapolation.py runs/reptile-omniglot-5w1s-curve --target 97.68
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ``(a, b)`` of ``acc = a + b * log10(step)``."""
    xs = [math.log10(s) for s, _ in points]
    ys = [a for _, a in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("curve_extrapolation: need validation points at two different steps at least")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--target", type=float, required=True, help="accuracy in percent, e.g. the paper's")
    p.add_argument("--points", type=int, default=4, help="fit on the last POINTS validation points")
    a = p.parse_args()
    lines = [json.loads(x) for x in (Path(a.run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    val = [(r["step"], r["val_acc"]) for r in lines if "val_acc" in r]
    if len(val) < 2:
        raise SystemExit(f"{a.run_dir}: fewer than two validation points in metrics.jsonl")
    used = val[-a.points:]
    intercept, slope = fit(used)
    steps = 10 ** ((a.target - intercept) / slope) if slope > 0 else math.inf
    print(json.dumps({"run": a.run_dir, "val_points": val, "fit_on_steps": [s for s, _ in used],
                      "points_per_decade": round(slope, 3), "target": a.target,
                      "last_val_acc": val[-1][1], "steps_to_target_loglinear": round(steps)
                      if math.isfinite(steps) else None}))


if __name__ == "__main__":
    main()
