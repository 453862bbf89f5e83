"""Open-set episodes and calibration of a photo model (issue 25 items 5 and 6).

Each episode draws 10 classes: the first 5 are the support classes (``--shots`` photos each), and the queries
are 15 photos of each of the 10 (75 known + 75 unknown). Per episode it records:
- AUROC of the known-class score (cosine of a query's mapped feature to its nearest class mean,
  ``SimpleShot.known_scores``) separating known from unknown queries;
- closed-set accuracy on the known queries, three ways: the head given the known queries only (no unknown
  photo in the batch), the head given the whole batch (unknown photos can drag a transductive head's
  prototypes), and the head with gating (queries below the threshold left out of the transductive batch);
- with ``--threshold``: the false-rejection rate (known queries called unknown), the rate of unknown
  queries caught, and the 6-way accuracy (5 classes + "unknown") over all 150 queries.
It also pools the closed-set probabilities of the balanced 5-way episodes (known queries only) for the
expected calibration error (ECE, 15 equal-width bins) at ``--temperature``.

On validation classes (``--split val``) it chooses, and prints as ``chosen``: the threshold that rejects
``--frr`` of the known queries (pooled over the episodes of both datasets and both shot counts), and the
temperature (logits divided by it) minimising the negative log-likelihood of the known queries over a
fixed grid. On test classes it reports the figures at the given ``--threshold`` / ``--temperature``.

    python benchmarks/photos/open_set.py --models tf_efficientnet_lite0+tf_efficientnet_lite1 \
        --image-size 224 \
        --head soft_kmeans:steps=5 --split val --out results/photos/open_set_val.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from metashot.algorithms.simpleshot import SimpleShot
from metashot.data import load_split
from metashot.data.episodes import EpisodeSampler
from metashot.evaluate import mean_ci95
from metashot.nn.pretrained import TimmBackbone, feature_store

sys.path.insert(0, str(Path(__file__).parent))
from heads_eval import parse_head  # noqa: E402

TEMPERATURES = [0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0, 5.6, 8.0, 11.0, 16.0]


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a known query > score of an unknown one), ties counted half (Mann-Whitney)."""
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    for v in np.unique(allv):  # average ranks of ties
        tie = allv == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def ece(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(total)


def run(learner: SimpleShot, store, shots: int, episodes: int, seed: int, threshold: float | None):
    """Per-episode records and pooled (known scores, logits, labels) of the known queries."""
    sampler = EpisodeSampler(store, 10, shots, 15, seed=seed, tasks_per_batch=1)
    rows, known_pool, logit_pool, label_pool = [], [], [], []
    for i in range(episodes):
        b = sampler.sample(i)
        zs_all, zq = learner.embed(b.support_x[0]), learner.embed(b.query_x[0])
        ys_all, yq = b.support_y[0], b.query_y[0]
        keep_s = ys_all < 5
        zs, ys = zs_all[keep_s][None], ys_all[keep_s][None]
        is_known = yq < 5
        known = learner.known_scores(zs, ys, zq[None], 5)[0]
        r = {"auroc": auroc(known[is_known].numpy(), known[~is_known].numpy())}
        only = learner.scores(zs, ys, zq[is_known][None], 5)[0]
        whole = learner.scores(zs, ys, zq[None], 5)[0][is_known]
        r["acc_known_only"] = float((only.argmax(-1) == yq[is_known]).double().mean())
        r["acc_with_unknown"] = float((whole.argmax(-1) == yq[is_known]).double().mean())
        known_pool.append(known[is_known].numpy())
        logit_pool.append(only.numpy())
        label_pool.append(yq[is_known].numpy())
        if threshold is not None:
            keep = known >= threshold
            gated = learner.scores(zs, ys, zq[None], 5, transductive=False)[0]
            if bool(keep.any()):
                gated[keep] = learner.scores(zs, ys, zq[keep][None], 5)[0]
            r["acc_gated"] = float((gated[is_known].argmax(-1) == yq[is_known]).double().mean())
            pred = torch.where(keep, gated.argmax(-1), torch.full_like(yq, 5))
            truth = torch.where(is_known, yq, torch.full_like(yq, 5))
            r["acc6_at_threshold"] = float((pred == truth).double().mean())
            r["frr"] = float((~keep[is_known]).double().mean())
            r["unknown_caught"] = float((~keep[~is_known]).double().mean())
        rows.append(r)
    return rows, np.concatenate(known_pool), np.concatenate(logit_pool), np.concatenate(label_pool)


def nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    z = logits / t
    z = z - z.max(1, keepdims=True)
    return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True)
    ap.add_argument("--image-size", type=int, required=True)
    ap.add_argument("--head", default="ncm")
    ap.add_argument("--split", choices=["val", "test"], required=True)
    ap.add_argument("--datasets", nargs="+", default=["mini_imagenet", "flowers102"])
    ap.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--seed", type=int, help="default: 777 on val, 1234 on test")
    ap.add_argument("--frr", type=float, default=0.1, help="val: the false-rejection rate the threshold is "
                    "set to")
    ap.add_argument("--threshold", type=float, help="test: the threshold chosen on val")
    ap.add_argument("--temperature", type=float, help="test: the temperature chosen on val")
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(2)
    seed = a.seed if a.seed is not None else (777 if a.split == "val" else 1234)
    names = a.models.split("+")
    backbone = TimmBackbone(names if len(names) > 1 else names[0], power=0.5, image_size=a.image_size)
    name, args = parse_head(a.head)
    learner = SimpleShot(backbone, centre="support", temperature=10.0, head=name, head_args=args).eval()
    records, known_all, logits_all, labels_all = [], [], [], []
    with torch.inference_mode():
        for dataset in a.datasets:
            store = feature_store(backbone, load_split(dataset, a.split, image_spec=backbone.image_spec))
            with backbone.on_features():
                for shots in a.shots:
                    rows, known, logits, labels = run(learner, store, shots, a.episodes, seed, a.threshold)
                    known_all.append(known)
                    logits_all.append(logits)
                    labels_all.append(labels)
                    rec = {"models": a.models, "input_size": a.image_size, "head": name, "head_args": args,
                           "dataset": f"{dataset}/{a.split}", "known_ways": 5, "unknown_ways": 5,
                           "shots": shots, "queries_per_class": 15, "episodes": a.episodes, "seed": seed,
                           "threshold": a.threshold}
                    for key in rows[0]:
                        m, ci = mean_ci95(np.array([r[key] for r in rows]))
                        scale = 1 if key == "auroc" else 100
                        rec[key] = round(scale * m, 4)
                        rec[key + "_ci95"] = round(scale * ci, 4)
                    if a.temperature is not None:
                        z = logits / a.temperature
                        p = np.exp(z - z.max(1, keepdims=True))
                        p /= p.sum(1, keepdims=True)
                        rec["temperature"] = a.temperature
                        rec["ece"] = round(ece(p.max(1), (p.argmax(1) == labels).astype(float)), 4)
                        rec["mean_confidence"] = round(float(p.max(1).mean()), 4)
                        rec["accuracy_closed"] = round(float((p.argmax(1) == labels).mean()), 4)
                    records.append(rec)
                    print(json.dumps(rec), flush=True)
    if a.split == "val":
        known = np.concatenate(known_all)
        logits, labels = np.concatenate(logits_all), np.concatenate(labels_all)
        nlls = {t: nll(logits, labels, t) for t in TEMPERATURES}
        chosen = {"chosen": {"threshold": round(float(np.quantile(known, a.frr)), 4), "frr_target": a.frr,
                             "temperature": min(nlls, key=nlls.get),
                             "nll_by_temperature": {str(t): round(v, 4) for t, v in nlls.items()},
                             "models": a.models, "input_size": a.image_size, "head": a.head}}
        records.append(chosen)
        print(json.dumps(chosen))
    if a.out:
        with open(a.out, "a") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
