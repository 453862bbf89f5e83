"""AUROC of known- vs unknown-class queries for candidate known-class scores (open set, issue 25 item 5), on
VALIDATION classes only: 150 episodes of 10 classes (5 known with support photos, 15 queries of each of the
10), at 1 and 5 shots, mini-ImageNet val and Flowers-102 val. The scores, all on L2-normalised embeddings:
the cosine to the nearest class mean after centring on the support set (``centred``), with no centring
(``raw``), after centring on the support set and the query batch together (``batchcentred``), the gap
between the two nearest class means (``top2_gap``) and the softmax maximum (``softmax``). One JSON line per
cell.

    python benchmarks/photos/known_score_variants.py tf_efficientnet_lite0 160 \
        --out results/photos/known_score_val.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from metashot.algorithms.heads import cosine, prototypes
from metashot.algorithms.simpleshot import SimpleShot
from metashot.data import load_split
from metashot.data.episodes import EpisodeSampler
from metashot.nn.feature_maps import batch_centre, centre_map, support_centre
from metashot.nn.pretrained import TimmBackbone, feature_store

sys.path.insert(0, str(Path(__file__).parent))
from open_set import auroc  # noqa: E402


def nearest(zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    return cosine(centre_map(zq, m), prototypes(centre_map(zs, m), ys, 5))  # [M, 5]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models")
    ap.add_argument("image_size", type=int)
    ap.add_argument("--episodes", type=int, default=150)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(2)
    names = a.models.split("+")
    bb = TimmBackbone(names if len(names) > 1 else names[0], power=0.5, image_size=a.image_size)
    learner = SimpleShot(bb, centre="support", temperature=10.0).eval()
    with torch.inference_mode():
        for ds in ("mini_imagenet", "flowers102"):
            store = feature_store(bb, load_split(ds, "val", image_spec=bb.image_spec), progress=False)
            with bb.on_features():
                for shots in (1, 5):
                    sampler = EpisodeSampler(store, 10, shots, 15, seed=777)
                    res: dict[str, list[float]] = {}
                    for i in range(a.episodes):
                        b = sampler.sample(i)
                        zs_all, zq = learner.embed(b.support_x[0]), learner.embed(b.query_x[0])
                        ks = b.support_y[0] < 5
                        zs, ys = zs_all[ks], b.support_y[0][ks]
                        kn = (b.query_y[0] < 5).numpy()
                        centred = nearest(zs, ys, zq, support_centre(zs))
                        top = centred.topk(2, -1).values
                        scores = {"centred": centred.amax(-1), "raw": nearest(zs, ys, zq, None).amax(-1),
                                  "batchcentred": nearest(zs, ys, zq, batch_centre(zs, zq)).amax(-1),
                                  "top2_gap": top[:, 0] - top[:, 1],
                                  "softmax": (10 * centred).softmax(-1).amax(-1)}
                        for k, v in scores.items():
                            res.setdefault(k, []).append(auroc(v.numpy()[kn], v.numpy()[~kn]))
                    rec = {"models": a.models, "input_size": a.image_size, "dataset": f"{ds}/val",
                           "shots": shots, "episodes": a.episodes, "seed": 777,
                           "auroc": {k: round(float(np.mean(v)), 4) for k, v in res.items()}}
                    print(json.dumps(rec), flush=True)
                    if a.out:
                        with open(a.out, "a") as f:
                            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
