"""Few-shot heads over frozen photo features: balanced and realistic (Dirichlet) queries, 1 and 5 shots.

For one backbone (a frozen ImageNet EfficientNet-Lite, or a '+'-joined ensemble, at one input size, in the
precision `auto` picks on this machine) and a list of heads (metashot.algorithms.heads, each with its
arguments), scores 600 fixed 5-way episodes with 15 queries per class (75 per episode) on mini-ImageNet and
Flowers-102 (``--split val`` for choices, ``--split test`` for the figures), each at 1 and 5 shots, with
balanced queries and with Dirichlet(2) query proportions (Veilleux et al. 2021). Every head sees identical
episodes (fixed by the seed). Prints one JSON line per cell; ``--out`` appends them to a JSONL file.

    python benchmarks/photos/heads_eval.py --models tf_efficientnet_lite0+tf_efficientnet_lite1 \
        --image-size 224 --split val --heads ncm soft_kmeans:steps=5 bd_cspn tim \
        --out results/photos/heads_val.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from metashot.algorithms.simpleshot import SimpleShot
from metashot.data import load_split
from metashot.evaluate import evaluate
from metashot.nn.pretrained import TimmBackbone, feature_store


def parse_head(spec: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,key=value`` -> (name, args); values are parsed as JSON when they can be."""
    name, _, rest = spec.partition(":")
    args: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        k, _, v = part.partition("=")
        try:
            args[k] = json.loads(v)
        except json.JSONDecodeError:
            args[k] = v
    return name, args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="timm model, or models joined by '+' (an ensemble)")
    ap.add_argument("--image-size", type=int, required=True)
    ap.add_argument("--heads", nargs="+", required=True, help="name or name:key=value,...")
    ap.add_argument("--split", choices=["val", "test"], required=True)
    ap.add_argument("--datasets", nargs="+", default=["mini_imagenet", "flowers102"])
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--seed", type=int, help="episode seed (default: 777 on val, 1234 on test)")
    ap.add_argument("--imbalance", nargs="+", default=["none", "2"], help="'none' or Dirichlet alphas")
    ap.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="append the JSON lines to this file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    seed = a.seed if a.seed is not None else (777 if a.split == "val" else 1234)
    names = a.models.split("+")
    backbone = TimmBackbone(names if len(names) > 1 else names[0], power=0.5, image_size=a.image_size)
    spec = backbone.image_spec
    heads = [parse_head(h) for h in a.heads]
    for dataset in a.datasets:
        t0 = time.perf_counter()
        store = feature_store(backbone, load_split(dataset, a.split, image_spec=spec))
        feat_s = round(time.perf_counter() - t0, 1)
        for name, args in heads:
            learner = SimpleShot(backbone, centre="support", temperature=10.0, head=name, head_args=args)
            for shots in a.shots:
                for imb in a.imbalance:
                    alpha = None if imb == "none" else float(imb)
                    with backbone.on_features():  # the store already holds trunk features
                        r = evaluate(learner, store, 5, shots, 15, a.episodes, seed, 50, progress=False,
                                     cache_features=False, imbalance=alpha)
                    precision = str(backbone.compute_dtype()).replace("torch.", "")
                    rec = {"models": a.models, "input_size": spec.size, "precision": precision,
                           "head": name, "head_args": args,
                           "dataset": f"{dataset}/{a.split}", "ways": 5, "shots": shots, "queries": 75,
                           "imbalance": alpha, "acc": r["acc"], "ci95": r["ci95"], "episodes": a.episodes,
                           "seed": seed, "head_s": r["seconds"], "features_s": feat_s}
                    print(json.dumps(rec), flush=True)
                    if a.out:
                        with open(a.out, "a") as f:
                            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
