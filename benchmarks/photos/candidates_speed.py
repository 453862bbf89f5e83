"""Network time of each photo-model candidate for one fit + predict: 25 support + 75 query images, already
decoded and preprocessed (random pixels at the candidate's input size), torch's default threads; the median
of ``--repeats`` after one warm-up. One JSON line per candidate. The speed budget of the photo model's choice
(configs/photos.yaml) is read from these lines; benchmarks/photos/speed.py times the whole path with photos.

    python benchmarks/photos/candidates_speed.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from metashot.nn.backbones import build_backbone

CANDIDATES = [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite0", 192), ("tf_efficientnet_lite0", 160),
              ("tf_efficientnet_lite1", 240), ("tf_efficientnet_lite1", 192), ("tf_efficientnet_lite1", 160),
              ("tf_efficientnet_lite0+tf_efficientnet_lite1", 224),
              ("tf_efficientnet_lite0+tf_efficientnet_lite1", 192),
              ("tf_efficientnet_lite0+tf_efficientnet_lite1", 160)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    for model, size in CANDIDATES:
        names = model.split("+")
        bb = build_backbone("timm", model=names if len(names) > 1 else model, pretrained=True,
                            image_size=size, power=0.5).eval()
        x = torch.rand(100, 3, size, size, generator=torch.Generator().manual_seed(0))
        times = []
        with torch.inference_mode():
            bb(x[:8])
            for _ in range(a.repeats):
                t = time.perf_counter()
                bb(x[:25])
                bb(x[25:])
                times.append(time.perf_counter() - t)
        print(json.dumps({"model": model, "input_size": size, "threads": torch.get_num_threads(),
                          "network_s_25_plus_75": round(statistics.median(times), 3),
                          "all_s": [round(t, 3) for t in times]}), flush=True)


if __name__ == "__main__":
    main()
