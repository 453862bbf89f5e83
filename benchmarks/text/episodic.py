"""Episodic few-shot intent detection on ProtAugment's class-disjoint folds (Dopierre et al. 2021 protocol).

For every dataset, fold and shot count: 5-way episodes with 5 queries per class, 600 fixed test
episodes (seed 1234) on the fold's test intents. Training-free methods (``ncm``, ``logreg``) run on the
frozen all-MiniLM-L6-v2 embeddings; meta-trained methods (``protonet``, ``anil``, ``maml``, ``matching``)
are trained with ``configs/<method>-minilm-episodic-intents.yaml`` on the fold's training intents (the
best validation step is kept) and evaluated the same way. Prints one JSON line per (method, dataset, fold,
shots) and, at the end, a summary per (method, dataset, shots): the mean of the fold accuracies and the
95% CI of the 3,000 pooled episodes (1.96 * std / sqrt(n)).

    nice -n 10 python benchmarks/text/episodic.py --methods ncm logreg protonet \
        --out results/text/episodic.jsonl

Embeddings must be cached first (benchmarks/text/encode_all.py), or they are encoded on first use.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

TRAINED = ("protonet", "anil", "maml", "matching")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=["banking77", "clinc150", "hwu64"])
    ap.add_argument("--methods", nargs="*", default=["ncm", "logreg", "protonet"])
    ap.add_argument("--folds", nargs="*", type=int, default=[1, 2, 3, 4, 5])
    ap.add_argument("--shots", nargs="*", type=int, default=[1, 5])
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default="runs/text/episodic", help="folder of the meta-training runs")
    ap.add_argument("--out", help="append the JSON lines to this file too")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from metashot.algorithms.logreg import LogisticRegression
    from metashot.algorithms.ncm import NearestClassMean
    from metashot.checkpoint import load_checkpoint
    from metashot.config import load_config
    from metashot.data import load_split
    from metashot.evaluate import episode_accuracies
    from metashot.train import train_from_config

    out = open(a.out, "a") if a.out else None
    pooled: dict[tuple[str, str, int], list[np.ndarray]] = {}
    for dataset in a.datasets:
        for fold in a.folds:
            test = load_split(dataset, "test", None, fold=fold)
            for shots in a.shots:
                for method in a.methods:
                    t0 = time.perf_counter()
                    rec: dict = {"method": method, "dataset": dataset, "fold": fold, "shots": shots,
                                 "ways": 5, "queries": 5, "episodes": a.episodes, "seed": a.seed}
                    if method == "ncm":
                        learner = NearestClassMean()
                    elif method == "logreg":
                        learner = LogisticRegression()
                    elif method in TRAINED:
                        run = Path(a.runs) / f"{method}-{dataset}-fold{fold}-5w{shots}s"
                        cfg = load_config(f"configs/{method}-minilm-episodic-intents.yaml", [
                            f"data.dataset={dataset}", f"data.options.fold={fold}", f"episodes.shots={shots}",
                            f"eval.shots={shots}", f"train.out_dir={run}", f"train.threads={a.threads}",
                            f"name={method}-minilm-{dataset}-fold{fold}-5w{shots}s"])
                        summary = train_from_config(cfg, progress=False)
                        best = run / "best" if (run / "best").is_dir() else run / "final"
                        learner, meta = load_checkpoint(best)
                        rec.update(train_seconds=summary["seconds"], best_val_acc=summary.get("best_val_acc"),
                                   best_step=meta.get("step"), checkpoint=str(run))
                    else:
                        raise SystemExit(f"unknown method {method!r}; use ncm, logreg or one of {TRAINED}")
                    accs = episode_accuracies(learner, test, 5, shots, 5, a.episodes, a.seed, 50,
                                              progress=False)
                    rec.update(acc=round(100 * accs.mean(), 2),
                               ci95=round(100 * 1.96 * accs.std() / np.sqrt(len(accs)), 2),
                               seconds=round(time.perf_counter() - t0, 1))
                    pooled.setdefault((method, dataset, shots), []).append(accs)
                    line = json.dumps(rec)
                    print(line, flush=True)
                    if out:
                        out.write(line + "\n")
                        out.flush()
    for (method, dataset, shots), runs in sorted(pooled.items()):
        allacc = np.concatenate(runs)
        rec = {"summary": True, "method": method, "dataset": dataset, "shots": shots, "folds": len(runs),
               "acc": round(100 * float(np.mean([r.mean() for r in runs])), 2),
               "ci95": round(100 * 1.96 * allacc.std() / np.sqrt(len(allacc)), 2),
               "fold_std": round(100 * float(np.std([r.mean() for r in runs])), 2)}
        print(json.dumps(rec), flush=True)
        if out:
            out.write(json.dumps(rec) + "\n")
    if out:
        out.close()


if __name__ == "__main__":
    main()
