"""Temperature scaling (Guo et al. 2017) of a checkpoint's probabilities, fitted on validation episodes.

A ProtoNet's softmax over negative squared distances is nearly always 1.0 / 0.0 on Omniglot: right or
wrong, it is sure. One scalar T (probabilities = softmax(logits / T)) is fitted by minimising the negative
log-likelihood of the query labels of ``--val-episodes`` episodes of the VALIDATION split (the Vinyals val
split for Omniglot checkpoints); the expected calibration error (ECE, ``--bins`` equal-width confidence bins,
the confidence being the largest probability) and the NLL are then reported before and after on fixed TEST
episodes (the checkpoint's evaluation seed). Dividing logits by T > 0 changes no argmax: same accuracy.

``--write`` stores T in the checkpoint's config.json (key ``temperature``), which FewShotClassifier applies
in ``decision_function`` / ``predict_proba``; the weights, and their SHA-256, are untouched. Prints one JSON
object.

    python benchmarks/calibration.py protonet-omniglot                 # 5-way 1-shot, 300 val episodes
    python benchmarks/calibration.py protonet-omniglot --write         # ... and store T in the checkpoint
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from metashot.checkpoint import CONFIG, load_checkpoint, resolve
from metashot.data import load_split
from metashot.data.episodes import EpisodeSampler


def episode_logits(learner: Any, store: Any, ways: int, shots: int, queries: int, episodes: int, seed: int,
                   meta_batch: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw logits [episodes * ways * queries, ways] (float64) and labels of fixed seeded episodes."""
    from metashot.evaluate import _concat

    sampler = EpisodeSampler(store, ways, shots, queries, seed=seed, tasks_per_batch=1)
    logits, labels = [], []
    ctx = torch.enable_grad if learner.adapt_needs_grad else torch.inference_mode
    for start in range(0, episodes, meta_batch):
        stop = min(start + meta_batch, episodes)
        batch = _concat([sampler.sample(i) for i in range(start, stop)]).to("cpu")  # uint8 -> float
        with ctx():
            out = learner.predict_batch(batch)
        logits.append(out.detach().double().reshape(-1, ways))
        labels.append(batch.query_y.reshape(-1))
    return torch.cat(logits), torch.cat(labels)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising the mean NLL of softmax(logits / T) (convex in 1/T; solved on log T)."""
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def ece(proba: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: sum over equal-width confidence bins B of |B|/n * |acc(B) - conf(B)|."""
    conf = proba.max(1)
    right = proba.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    return float(total)


def report(logits: torch.Tensor, labels: torch.Tensor, t: float, bins: int) -> dict[str, float]:
    proba = torch.softmax(logits / t, -1).numpy()
    y = labels.numpy()
    return {"ece_percent": round(100 * ece(proba, y, bins), 3),
            "nll": round(float(torch.nn.functional.cross_entropy(logits / t, labels)), 4),
            "mean_confidence": round(float(proba.max(1).mean()), 4),
            "acc_percent": round(100 * float((proba.argmax(1) == y).mean()), 3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="checkpoint folder, run folder or bundled name")
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--queries", type=int, default=15)
    ap.add_argument("--val-episodes", type=int, default=300)
    ap.add_argument("--val-seed", type=int, default=777)
    ap.add_argument("--test-episodes", type=int, default=1000)
    ap.add_argument("--test-seed", type=int, help="default: the checkpoint's eval seed (1234)")
    ap.add_argument("--bins", type=int, default=15)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--write", action="store_true", help="store T in the checkpoint's config.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    learner, meta = load_checkpoint(a.checkpoint)
    data = meta["config"]["data"]
    spec = meta.get("image_spec")

    def store(split: str) -> Any:
        kw = {"image_spec": spec} if data["dataset"] != "omniglot" and spec else {}
        return load_split(data["dataset"], data[f"{split}_split"], data.get("root"),
                          image_size=data.get("image_size"), **kw, **data.get("options", {}))

    test_seed = a.test_seed if a.test_seed is not None else meta["config"].get("eval", {}).get("seed", 1234)
    val_logits, val_y = episode_logits(learner, store("val"), a.ways, a.shots, a.queries, a.val_episodes,
                                       a.val_seed)
    t = fit_temperature(val_logits, val_y)
    test_logits, test_y = episode_logits(learner, store("test"), a.ways, a.shots, a.queries, a.test_episodes,
                                         test_seed)
    res = {
        "checkpoint": str(a.checkpoint), "temperature": round(t, 4),
        "fit": {"split": data["val_split"], "episodes": a.val_episodes, "seed": a.val_seed, "ways": a.ways,
                "shots": a.shots, "queries": a.queries,
                "nll_before": report(val_logits, val_y, 1.0, a.bins)["nll"],
                "nll_after": report(val_logits, val_y, t, a.bins)["nll"]},
        "test": {"split": data["test_split"], "episodes": a.test_episodes, "seed": test_seed, "bins": a.bins,
                 "before": report(test_logits, test_y, 1.0, a.bins),
                 "after": report(test_logits, test_y, t, a.bins)},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if a.write:
        path = resolve(a.checkpoint) / CONFIG
        doc = json.loads(path.read_text())
        doc["temperature"] = round(t, 4)
        path.write_text(json.dumps(doc, indent=2, sort_keys=True))  # the checkpoint writer's format
        res["written"] = str(path)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
