"""Meta-train FEAT's set-to-set layer on cached features of mini-ImageNet's training classes.

The cheap form of P>M>F's second stage: the photo backbone (a frozen ImageNet EfficientNet-Lite, or a
'+'-joined ensemble, at one input size) embeds mini-ImageNet's 64 training classes once (cached); only the
FEAT layer (:mod:`metashot.algorithms.heads.feat`) learns, from 5-way episodes with 15 queries per class,
shots alternating 1 and 5 between steps. Every ``--val-every`` steps the layer is scored on validation
classes only (mini-ImageNet val and Flowers-102 val, 1 and 5 shots, balanced queries, ``--val-episodes``
fixed episodes, seed 777). The rule, fixed before any test figure: keep the step with the best mean of those
four validation accuracies; step 0 (the untrained layer, which is the nearest-class-mean rule) is a
candidate, so a layer that does not help is not kept. Writes the kept layer (safetensors) to ``--out`` and
one JSON line per validation point to ``--log``.

    python benchmarks/photos/feat_train.py --models tf_efficientnet_lite0+tf_efficientnet_lite1 \
        --image-size 224 --out runs/feat/lite01-224.safetensors --log results/photos/feat_train.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from metashot.algorithms.heads.feat import save_set_attention
from metashot.algorithms.simpleshot import SimpleShot
from metashot.data import load_split
from metashot.data.episodes import EpisodeSampler
from metashot.evaluate import evaluate
from metashot.nn.feature_cache import feature_store
from metashot.nn.pretrained import TimmBackbone

VAL = (("mini_imagenet", 1), ("mini_imagenet", 5), ("flowers102", 1), ("flowers102", 5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="timm model, or models joined by '+' (an ensemble)")
    ap.add_argument("--image-size", type=int, required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--tasks", type=int, default=16, help="episodes per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--key-dim", type=int, default=32)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--scale", type=float, default=10.0)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--val-episodes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True, help="safetensors file for the kept layer")
    ap.add_argument("--log", help="append one JSON line per validation point to this file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    names = a.models.split("+")
    backbone = TimmBackbone(names if len(names) > 1 else names[0], power=0.5, image_size=a.image_size)
    spec = backbone.image_spec
    train = feature_store(backbone, load_split("mini_imagenet", "train", image_spec=spec))
    val = {d: feature_store(backbone, load_split(d, "val", image_spec=spec)) for d in {d for d, _ in VAL}}
    learner = SimpleShot(backbone, centre="support", temperature=a.scale, head="feat",
                         head_args={"scale": a.scale, "key_dim": a.key_dim, "rank": a.rank})
    layer = learner.head.module(train.images.shape[1])  # type: ignore[attr-defined]
    opt = torch.optim.Adam(layer.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    samplers = {k: EpisodeSampler(train, 5, k, 15, seed=a.seed + k, tasks_per_batch=a.tasks) for k in (1, 5)}
    best: tuple[float, int] = (-1.0, -1)
    t0, losses = time.perf_counter(), []
    for step in range(a.steps + 1):
        if step % a.val_every == 0:
            layer.eval()
            accs = {}
            with torch.no_grad(), backbone.on_features():
                for d, k in VAL:
                    r = evaluate(learner, val[d], 5, k, 15, a.val_episodes, 777, 50, progress=False,
                                 cache_features=False)
                    accs[f"{d}/val/{k}shot"] = r["acc"]
            mean = sum(accs.values()) / len(accs)
            rec = {"models": a.models, "input_size": spec.size, "step": step, "val": accs, "val_mean": mean,
                   "train_loss": (sum(losses) / len(losses)) if losses else None,
                   "seconds": round(time.perf_counter() - t0, 1), "args": vars(a)}
            print(json.dumps(rec), flush=True)
            if a.log:
                with open(a.log, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            losses = []
            if mean > best[0]:
                best = (mean, step)
                Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                save_set_attention(layer, a.out, {"models": a.models, "input_size": str(spec.size),
                                                  "step": str(step), "val_mean": f"{mean:.4f}"})
            layer.train()
        if step == a.steps:
            break
        batch = samplers[1 if step % 2 == 0 else 5].sample(step // 2)
        T, S = batch.support_x.shape[:2]
        with torch.no_grad(), backbone.on_features():
            z = learner.embed(torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)]))
        zs, zq = z[: T * S].view(T, S, -1), z[T * S:].view(T, batch.query_x.shape[1], -1)
        logits = learner.scores(zs, batch.support_y, zq, batch.ways)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    print(json.dumps({"kept_step": best[1], "val_mean": best[0], "out": a.out}), flush=True)


if __name__ == "__main__":
    main()
