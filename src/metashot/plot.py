"""Learning curves of a run folder: ``metashot plot RUN_DIR`` -> ``RUN_DIR/learning_curves.png``.

Reads ``metrics.jsonl`` (written by the Trainer) and draws two panels: the training loss per logging step,
and the accuracy in percent (training accuracy of the meta-batches, and validation accuracy on the fixed
validation episodes with its 95% confidence band). matplotlib is an optional dependency
(``pip install 'metashot[plot]'``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metashot.pyplot import pyplot

PNG = "learning_curves.png"


def read_metrics(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training records, validation records) of ``RUN_DIR/metrics.jsonl``.

    Raises:
        FileNotFoundError: no metrics.jsonl in ``run_dir``.
        ValueError: a line is not JSON (names the line) or the file has no records.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir}: no metrics.jsonl; is this a metashot run folder (metashot train)?"
        )
    train, val = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n} is not JSON ({e})") from e
        if "val_acc" in rec:
            val.append(rec)
        elif "loss" in rec:
            train.append(rec)
    if not train and not val:
        raise ValueError(f"{path}: no training or validation records to plot")
    return train, val


def train_acc_percent(records: list[dict[str, Any]]) -> list[float]:
    """Training accuracies in percent. The Trainer logs percent; runs written before it did logged fractions
    in [0, 1] (all values <= 1, which percent accuracies of N-way classification never are in a run)."""
    acc = [float(r["acc"]) for r in records]
    return [100 * a for a in acc] if max(acc, default=0.0) <= 1.0 else acc


def plot_any_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """:func:`plot_run`, or for a meta-RL run its return curves (:func:`metashot.rl.plots.plot_rl_run`)."""
    from metashot.rl.plots import is_rl_run, plot_rl_run

    return plot_rl_run(run_dir, output) if is_rl_run(run_dir) else plot_run(run_dir, output)


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the learning curves of ``run_dir`` as a PNG (default RUN_DIR/learning_curves.png); its path.

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
    """
    train, val = read_metrics(run_dir)
    plt = pyplot()
    out = Path(output) if output else Path(run_dir) / PNG
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    if train:
        steps = [r["step"] for r in train]
        ax_loss.plot(steps, [r["loss"] for r in train], color="tab:blue", lw=1.2, label="train loss")
        with_acc = [r for r in train if "acc" in r]  # regression runs log no accuracy
        if with_acc:
            ax_acc.plot([r["step"] for r in with_acc], train_acc_percent(with_acc), color="tab:blue",
                        lw=1.2, label="train (meta-batch)")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("meta-loss")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3)
    if val:
        vs = [r["step"] for r in val]
        va = [r["val_acc"] for r in val]
        ci = [r.get("val_ci95") or 0.0 for r in val]
        ax_acc.plot(vs, va, "o-", color="tab:orange", lw=1.5, ms=3, label="validation")
        ax_acc.fill_between(
            vs,
            [a - c for a, c in zip(va, ci, strict=True)],
            [a + c for a, c in zip(va, ci, strict=True)],
            color="tab:orange",
            alpha=0.25,
            label="validation 95% CI",
        )
        best = max(range(len(va)), key=lambda i: va[i])
        ax_acc.annotate(
            f"best {va[best]:.2f}% @ {vs[best]}",
            (vs[best], va[best]),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            fontsize=8,
            color="tab:orange",
        )
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("accuracy")
    ax_acc.grid(alpha=0.3)
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend(loc="lower right", fontsize=8)
    else:
        ax_acc.text(0.5, 0.5, "no accuracy logged", transform=ax_acc.transAxes, ha="center", color="gray")
    name = _run_name(Path(run_dir))
    fig.suptitle(name)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _run_name(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / "config.yaml").read_text())["name"])
    except (OSError, ValueError, KeyError):
        return run_dir.name
