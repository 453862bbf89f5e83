"""Full-way K-shot intent detection (the DNNC / CPFT protocol) and CLINC150 out-of-scope detection.

Full-way: the support set is the fixed K-shot subset of *all* intents (77 / 150 / 64; K = 5, 10, shipped as
row lists), the queries are the dataset's whole test set, and accuracy is over every test sentence. Methods
run on frozen all-MiniLM-L6-v2 embeddings: ``ncm`` (nearest class mean, cosine), ``logreg`` (L-BFGS logistic
regression), and ``protonet-kshot`` (ProtoNet + residual adapter meta-trained only on episodes drawn from the
K-shot subset itself, then adapted to the whole subset; no other labelled sentence is used).

Out-of-scope (``--oos``, CLINC150): the same K-shot classifiers; a query is rejected when its largest softmax
probability is below a threshold chosen on the validation set (in-scope val + oos_val) to maximise
(in-scope accuracy + OOS recall) / 2; reported on test (4,500 in-scope + 1,000 out-of-scope).

    nice -n 10 python benchmarks/text/fullway.py --out results/text/fullway.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from metashot.algorithms.base import MetaLearner
from metashot.data.store import ClassStore


def _labels_of(store: ClassStore, names: list[str]) -> torch.Tensor:
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in store.class_names if n not in index]
    if missing:
        raise ValueError(f"test classes {missing[:3]} are not in the support set")
    return torch.from_numpy(np.repeat([index[n] for n in store.class_names], store.counts))


def _proba(learner: MetaLearner, support: ClassStore, queries: list[ClassStore]) -> list[np.ndarray]:
    sy = torch.from_numpy(np.repeat(np.arange(support.num_classes), support.counts))
    learner.eval()
    ctx = torch.enable_grad() if learner.adapt_needs_grad else torch.inference_mode()
    with ctx:
        predictor = learner.adapt(support.images.float(), sy)
        return [torch.softmax(predictor(q.images.float()).detach(), -1).numpy() for q in queries]


def _kshot_protonet(support: ClassStore, shots: int, steps: int, seed: int) -> MetaLearner:
    """ProtoNet + adapter meta-trained on episodes of the K-shot subset (K-2 shots, 2 queries per class)."""
    from metashot.algorithms.protonet import ProtoNet
    from metashot.data.episodes import EpisodeSampler
    from metashot.nn.backbones import build_backbone

    torch.manual_seed(seed)
    learner = ProtoNet(build_backbone("adapter", dim=support.images.shape[1], hidden=256, dropout=0.2),
                       distance="cosine", temperature=10.0)
    ways = min(20, support.num_classes)
    sampler = EpisodeSampler(support, ways, shots - 2, 2, seed=seed, tasks_per_batch=8)
    opt = torch.optim.Adam(learner.parameters(), lr=3e-4, weight_decay=1e-4)
    learner.train()
    for step in range(steps):
        loss, _ = learner.meta_loss(sampler.sample(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return learner.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=["banking77", "clinc150", "hwu64"])
    ap.add_argument("--shots", nargs="*", type=int, default=[5, 10])
    ap.add_argument("--methods", nargs="*", default=["ncm", "logreg", "protonet-kshot"])
    ap.add_argument("--kshot-steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oos", action="store_true", help="also CLINC150 out-of-scope detection")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from metashot.data import load_split
    from metashot.data.text import embed_part
    from metashot.text.baselines import LogisticRegression, NearestClassMean
    from metashot.text.oos import REJECT, choose_threshold, oos_metrics, predict_with_rejection

    out = open(a.out, "a") if a.out else None

    def emit(rec: dict[str, Any]) -> None:
        print(json.dumps(rec), flush=True)
        if out:
            out.write(json.dumps(rec) + "\n")
            out.flush()

    for dataset in a.datasets:
        test = load_split(dataset, "fullway_test", None)
        oos = dataset == "clinc150" and a.oos
        if oos:
            # CLINC150's own val part (not a ProtAugment fold split) and its out-of-scope sentences
            val_in, val_oos, test_oos = (embed_part(dataset, p) for p in ("val", "oos_val", "oos_test"))
        for shots in a.shots:
            support = load_split(dataset, f"fullway_train_{shots}", None)
            y = _labels_of(test, support.class_names).numpy()
            for method in a.methods:
                t0 = time.perf_counter()
                if method == "ncm":
                    learner: MetaLearner = NearestClassMean()
                elif method == "logreg":
                    learner = LogisticRegression()
                elif method == "protonet-kshot":
                    learner = _kshot_protonet(support, shots, a.kshot_steps, a.seed)
                else:
                    raise SystemExit(f"unknown method {method!r}")
                queries = [test] + ([val_in, val_oos, test_oos] if oos else [])
                probs = _proba(learner, support, queries)
                acc = float((probs[0].argmax(1) == y).mean())
                rec = {"protocol": "fullway", "method": method, "dataset": dataset, "shots": shots,
                       "classes": support.num_classes, "support": len(support), "test": len(test),
                       "acc": round(100 * acc, 2), "seconds": round(time.perf_counter() - t0, 2)}
                emit(rec)
                if oos:
                    yv = np.concatenate([_labels_of(val_in, support.class_names).numpy(),
                                         np.full(len(val_oos), REJECT)])
                    best = choose_threshold(np.concatenate([probs[1], probs[2]]), yv)
                    yt = np.concatenate([y, np.full(len(test_oos), REJECT)])
                    m = oos_metrics(predict_with_rejection(np.concatenate([probs[0], probs[3]]),
                                                           best["threshold"]), yt)
                    emit({"protocol": "oos", "method": method, "dataset": dataset, "shots": shots,
                          "threshold": round(best["threshold"], 4), "val_in_scope_acc": best["in_scope_acc"],
                          "val_oos_recall": best["oos_recall"], **m})
    if out:
        out.close()


if __name__ == "__main__":
    main()
