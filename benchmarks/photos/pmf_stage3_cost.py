"""What P>M>F's third stage would cost here: fine-tuning the top of the `photos` backbone on a support set.

P>M>F (Hu et al., CVPR 2022) fine-tunes the backbone on each task's augmented support set (50 steps in the
paper) before classifying. The cheapest form here keeps everything below the last ``--top`` stages frozen and
cached (their output for the support photos is computed once, not timed) and trains only the top stages plus
the head convolution of every member of the bundled ensemble: per step one forward and one backward pass over
the 25 support photos (5-way 5-shot; the augmentation itself is not timed, so this is a lower bound). Prints
one JSON line: seconds per step (median of ``--repeats``), the projected time of ``--steps`` steps, and the
time budget of issue 25 (fit 25 + predict 75 within 3 s).

    python benchmarks/photos/pmf_stage3_cost.py --top 1 --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn

import metashot
from metashot.nn.pretrained import ConcatTrunk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=1, help="trained stages at the top of each network")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--support", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    clf = metashot.load("photos")
    bb = clf.learner.backbone
    members = list(bb.trunk.members) if isinstance(bb.trunk, ConcatTrunk) else [bb.trunk]
    size = bb.image_spec.size
    x = torch.rand(a.support, 3, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.arange(5).repeat_interleave(a.support // 5)
    lower, tops = [], []
    for m in members:
        k = len(m.blocks) - a.top
        with torch.no_grad():
            lower.append(m.blocks[:k](m.bn1(m.conv_stem(x))))  # frozen part: once, not timed
        top = nn.Sequential(*m.blocks[k:], m.conv_head, m.bn2, nn.AdaptiveAvgPool2d(1), nn.Flatten()).train()
        top.requires_grad_(True)
        tops.append(top)
    head = nn.Linear(sum(int(m.num_features) for m in members), 5)
    params = [p for t in tops for p in t.parameters()] + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    times = []
    for _ in range(a.repeats + 1):
        t0 = time.perf_counter()
        z = torch.cat([t(h) for t, h in zip(tops, lower, strict=True)], -1)
        loss = nn.functional.cross_entropy(head(z), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    step = statistics.median(times[1:])  # the first step warms up kernels
    print(json.dumps({"model": "photos", "members": bb.model_name, "input_size": size, "top_stages": a.top,
                      "support": a.support, "threads": a.threads, "seconds_per_step": round(step, 3),
                      "steps": a.steps, "projected_s": round(step * a.steps, 1), "budget_s": 3.0,
                      "fits": step * a.steps <= 3.0, "trained_params": sum(p.numel() for p in params),
                      "loadavg": [round(v, 2) for v in os.getloadavg()]}))


if __name__ == "__main__":
    main()
