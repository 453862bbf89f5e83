"""Meta-LSTM: the learned input gate (per-coordinate learning rate) and forget gate across inner steps.

Runs a trained Meta-LSTM on fixed seeded test episodes with the gates recorded, and plots, for every learner
parameter tensor, the mean over its coordinates and the episodes of i_t (and f_t) at each inner step t, like
Figure 2 of Ravi & Larochelle 2017. Also reports, per inner step, what the LSTM's input preprocessing
sees: the fraction of gradient coordinates below exp(-p) (its linear branch), the median |gradient| and the
support loss. Prints the values as JSON; the plot needs matplotlib (``pip install metashot[plot]``).

    python benchmarks/metalstm_gates.py metalstm-omniglot --episodes 100 --out docs/figures/metalstm-gates.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from metashot.algorithms.metalstm import MetaLSTM
from metashot.checkpoint import load_checkpoint
from metashot.data import load_split
from metashot.data.episodes import EpisodeSampler

Curves = dict[str, dict[str, list[float]]]


def gate_curves(learner: MetaLSTM, sampler: EpisodeSampler, episodes: int,
                gradients: dict[str, list[float]] | None = None) -> Curves:
    """{parameter name: {"input": [mean i_t for t = 1..T], "forget": [mean f_t ...]}} over ``episodes``.

    If ``gradients`` is a dict, it receives, per inner step t, the fraction of gradient coordinates that the
    input preprocessing sends to its linear branch (|g| < exp(-p)), the median |g|, and the mean support loss.
    """
    named = learner.learner_parameters()
    sizes = [p.numel() for _, p in named]
    T = learner.inner_steps
    sums = {n: {"input": torch.zeros(T, dtype=torch.float64), "forget": torch.zeros(T, dtype=torch.float64)}
            for n, _ in named}
    thresh = math.exp(-learner.meta_lstm.preprocess_p)
    small, median, loss = (torch.zeros(T, dtype=torch.float64) for _ in range(3))
    learner.eval()
    for e in range(episodes):
        sx, sy, _, _ = sampler.sample(e).to("cpu").task(0)
        trace: list[dict[str, torch.Tensor]] = []
        learner.inner_loop(sx, sy, trace=trace)
        for t, rec in enumerate(trace):
            for gate in ("input", "forget"):
                for (n, _), chunk in zip(named, rec[gate].split(sizes), strict=True):
                    sums[n][gate][t] += chunk.double().mean()
            g = rec["grad"].abs().double()
            small[t] += (g < thresh).double().mean()
            median[t] += g.median()
            loss[t] += float(rec["loss"])
    if gradients is not None:
        gradients.update({"linear_branch_fraction": (small / episodes).tolist(),
                          "median_abs_grad": (median / episodes).tolist(),
                          "support_loss": (loss / episodes).tolist()})
    return {n: {g: (v / episodes).tolist() for g, v in d.items()} for n, d in sums.items()}


def plot(curves: Curves, out: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        sys.exit("metalstm_gates.py: the plot needs matplotlib: pip install 'metashot[plot]'")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, d in curves.items():
        steps = range(1, len(d["input"]) + 1)
        style = "-" if name.endswith("weight") else "--"
        axes[0].plot(steps, d["input"], style, marker="o", ms=3, label=name)
        axes[1].plot(steps, d["forget"], style, marker="o", ms=3, label=name)
    axes[0].set(xlabel="inner step t", ylabel="mean input gate i_t (learning rate)", title="input gate")
    axes[1].set(xlabel="inner step t", ylabel="mean forget gate f_t", title="forget gate")
    for ax in axes:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[1].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="checkpoint folder, run folder or bundled name of a Meta-LSTM")
    p.add_argument("--split", help="split to draw episodes from (default: the config's test split)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", type=Path, help="PNG to write (omit for JSON only)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    learner, meta = load_checkpoint(a.checkpoint)
    if not isinstance(learner, MetaLSTM):
        sys.exit(f"metalstm_gates.py: {a.checkpoint} holds a {learner.algorithm_name} model, not metalstm")
    cfg = meta["config"]
    data, ev = cfg["data"], cfg["eval"]
    split = a.split or data["test_split"]
    store = load_split(data["dataset"], split, data.get("root"), data.get("image_size"),
                       **(data.get("options") or {}))
    sampler = EpisodeSampler(store, ev["ways"], ev["shots"], ev["queries"], seed=a.seed)
    grads: dict[str, list[float]] = {}
    curves = gate_curves(learner, sampler, a.episodes, grads)
    print(json.dumps({"checkpoint": str(a.checkpoint), "split": split, "episodes": a.episodes, "seed": a.seed,
                      "gradients": grads, "gates": curves}))
    if a.out:
        title = (f"Meta-LSTM gates, {a.checkpoint}: {store.meta.get('name', '?')} {ev['ways']}-way "
                 f"{ev['shots']}-shot, mean over {a.episodes} episodes (seed {a.seed})")
        plot(curves, a.out, title)


if __name__ == "__main__":
    main()
