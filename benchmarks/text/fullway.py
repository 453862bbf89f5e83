"""Full-way K-shot intent detection (the DNNC / CPFT protocol) and CLINC150 out-of-scope detection.

Full-way: the support set is the fixed K-shot subset of *all* intents (77 / 150 / 64; K = 5, 10, shipped as
row lists), the queries are the dataset's whole test set, and accuracy is over every test sentence. Methods
run on frozen all-MiniLM-L6-v2 embeddings: ``ncm`` (nearest class mean, cosine), ``logreg`` (L-BFGS logistic
regression), and ``protonet-kshot`` (ProtoNet + residual adapter meta-trained only on episodes drawn from the
K-shot subset itself, then adapted to the whole subset; no other labelled sentence is used), and
``finetune-top`` (the encoder's top ``--ft-layers`` transformer layers fine-tuned with the ProtoNet loss on
episodes of the K-shot subset, bottom layers frozen and their token states cached; then nearest class mean,
or ``--ft-classifier logreg``, on the fine-tuned embeddings). With several ``--ft-lr`` values (or
``--ft-select``) the learning rate and step count are chosen per dataset and K by holding out K/5 shots per
class of the subset (fine-tune on the rest, nearest-prototype accuracy on the held-out shots at each of
``--ft-checkpoints``, averaged over ``--ft-folds`` disjoint held-out folds); no other sentence is used.

Out-of-scope (``--oos``, CLINC150): the same K-shot classifiers; a query is rejected when its largest softmax
probability is below a threshold chosen on the validation set (in-scope val + oos_val) to maximise
(in-scope accuracy + OOS recall) / 2; reported on test (4,500 in-scope + 1,000 out-of-scope).

    nice -n 10 python benchmarks/text/fullway.py --out results/text/fullway.jsonl
    nice -n 10 python benchmarks/text/fullway.py --methods finetune-top --out results/text/fullway_ft.jsonl
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


def _finetune_top(a: argparse.Namespace, dataset: str, shots: int, support: ClassStore,
                  queries: list[tuple[str, ClassStore]], emit: Any) -> tuple[MetaLearner, ClassStore,
                                                                           list[ClassStore], dict[str, Any]]:
    """Fine-tune the top layers on the K-shot subset: (classifier, support and query features, info)."""
    from metashot.algorithms.logreg import LogisticRegression
    from metashot.algorithms.ncm import NearestClassMean
    from metashot.data.text import fullway_rows
    from metashot.text import finetune as ft
    from metashot.text.encoder import get_encoder

    t0 = time.perf_counter()
    bank_s = ft.part_token_bank(dataset, "train", a.ft_layers, rows=fullway_rows(dataset, shots).tolist(),
                                tag=f"train{shots}shot")
    banks_q = [ft.part_token_bank(dataset, part, a.ft_layers) for part, _ in queries]
    for bank, store in zip([bank_s] + banks_q, [support] + [q for _, q in queries], strict=True):
        if len(bank) != len(store):
            raise RuntimeError(f"{dataset}: token bank has {len(bank)} sentences, store {len(store)}")
    cache_s = time.perf_counter() - t0
    model = get_encoder().model  # type: ignore[attr-defined]
    y = np.repeat(np.arange(support.num_classes), support.counts)
    ways = a.ft_ways or max(2, a.ft_episode // shots)  # episodes of about the same size for every K
    kw = dict(ways=ways, queries=a.ft_queries, temperature=a.ft_temperature, weight_decay=a.ft_wd)
    lr, steps, chosen = a.ft_lr[0], a.ft_steps, "fixed"
    if a.ft_select or len(a.ft_lr) > 1:
        t1 = time.perf_counter()
        recs = ft.select_on_heldout(model, bank_s, y, a.ft_layers, a.ft_lr, a.ft_checkpoints,
                                    holdout=max(1, shots // 5), folds=a.ft_folds, seed=a.seed, **kw)
        for r in recs:
            emit({"protocol": "fullway-ft-select", "dataset": dataset, "shots": shots, "seed": a.seed,
                  "layers": a.ft_layers,
                  "holdout": max(1, shots // 5), "folds": a.ft_folds, **r})
        best = max(recs, key=lambda r: (r["heldout_acc"], -r["steps"], -r["lr"]))
        lr, steps, chosen = best["lr"], best["steps"], f"heldout ({time.perf_counter() - t1:.0f} s)"
    t2 = time.perf_counter()
    top = ft.TopLayers(model, a.ft_layers)
    losses = ft.finetune(top, bank_s, y, steps, lr=lr, seed=a.seed, **kw)
    ft_s = time.perf_counter() - t2
    zs = ft.to_store(ft.embed(top, bank_s), support)
    zq = [ft.to_store(ft.embed(top, b), q) for b, (_, q) in zip(banks_q, queries, strict=True)]
    learner: MetaLearner = LogisticRegression() if a.ft_classifier == "logreg" else NearestClassMean()
    info = {"layers": a.ft_layers, "lr": lr, "steps": steps, "ways": ways, "chosen": chosen,
            "ft_folds": a.ft_folds if (a.ft_select or len(a.ft_lr) > 1) else 0,
            "classifier": a.ft_classifier,
            "first_loss": round(losses[0], 4) if losses else None,
            "last_loss": round(float(np.mean(losses[-10:])), 4) if losses else None,
            "token_cache_seconds": round(cache_s, 1), "finetune_seconds": round(ft_s, 1)}
    return learner, zs, zq, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=["banking77", "clinc150", "hwu64"])
    ap.add_argument("--shots", nargs="*", type=int, default=[5, 10])
    ap.add_argument("--methods", nargs="*", default=["ncm", "logreg", "protonet-kshot"])
    ap.add_argument("--kshot-steps", type=int, default=100)
    ft = ap.add_argument_group("finetune-top")
    ft.add_argument("--ft-layers", type=int, default=1, help="top transformer layers fine-tuned (of 6)")
    ft.add_argument("--ft-steps", type=int, default=100, help="episodes (ignored when selecting)")
    ft.add_argument("--ft-lr", type=float, nargs="+", default=[5e-5],
                    help="learning rate; several = choose on held-out shots of the K-shot subset")
    ft.add_argument("--ft-select", action="store_true", help="choose the steps on held-out shots (one lr)")
    ft.add_argument("--ft-checkpoints", type=int, nargs="+", default=[0, 40, 80, 120])
    ft.add_argument("--ft-folds", type=int, default=1, help="held-out folds averaged when selecting")
    ft.add_argument("--ft-episode", type=int, default=160, help="sentences per episode: ways = this // K")
    ft.add_argument("--ft-ways", type=int, default=0, help="classes per episode (overrides --ft-episode)")
    ft.add_argument("--ft-queries", type=int, default=2)
    ft.add_argument("--ft-temperature", type=float, default=10.0)
    ft.add_argument("--ft-wd", type=float, default=0.01)
    ft.add_argument("--ft-classifier", choices=["ncm", "logreg"], default="ncm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oos", action="store_true", help="also CLINC150 out-of-scope detection")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from metashot.algorithms.logreg import LogisticRegression
    from metashot.algorithms.ncm import NearestClassMean
    from metashot.data import load_split
    from metashot.data.text import FULLWAY_TEST, embed_part
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
                queries = [test] + ([val_in, val_oos, test_oos] if oos else [])
                sup, extra = support, {}
                if method == "ncm":
                    learner: MetaLearner = NearestClassMean()
                elif method == "logreg":
                    learner = LogisticRegression()
                elif method == "protonet-kshot":
                    learner = _kshot_protonet(support, shots, a.kshot_steps, a.seed)
                elif method == "finetune-top":
                    parts = [FULLWAY_TEST[dataset]] + (["val", "oos_val", "oos_test"] if oos else [])
                    learner, sup, queries, extra = _finetune_top(a, dataset, shots, support,
                                                                 list(zip(parts, queries, strict=True)), emit)
                else:
                    raise SystemExit(f"unknown method {method!r}")
                probs = _proba(learner, sup, queries)
                acc = float((probs[0].argmax(1) == y).mean())
                rec = {"protocol": "fullway", "method": method, "dataset": dataset, "shots": shots,
                       "classes": support.num_classes, "support": len(support), "test": len(test),
                       "acc": round(100 * acc, 2), "seconds": round(time.perf_counter() - t0, 2),
                       "seed": a.seed, **extra}
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
