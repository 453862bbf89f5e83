"""Wall time of the practitioner path: ``fit`` on 25 support photos + ``predict`` on 75 query photos, as
files.

Photos are 5 Flowers-102 classes x (5 support + 15 query) images, written to a temporary folder twice: as
shipped (128x128 JPEG) and enlarged to 3024x4032 (a 12-megapixel phone photo, quality 90), so decoding large
files counts. The clock covers everything a user waits for after ``metashot.load``: decoding, preprocessing,
the network, the head. Each size is timed ``--repeats`` times after one warm-up; the median is reported.
Also reported: embedding throughput on preprocessed tensors (images/s, batch 64), the classifier's load
time, and the process's peak resident memory. Prints one JSON object.

    python benchmarks/photos/speed.py                 # the bundled `photos` model, torch's default threads
    python benchmarks/photos/speed.py --models tf_efficientnet_lite0+tf_efficientnet_lite1 --image-size 224 \
        --head soft_kmeans:steps=5 --out results/photos/speed_candidates.jsonl   # a candidate of the choice

``--precision`` (auto, fp32, bf16, onnx) sets the backbone's compute precision (default: the model's own);
``auto`` is bf16 where the CPU computes it natively (metashot._env.cpu_has_bf16), ``onnx`` float32 through
ONNX Runtime.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from PIL import Image

import metashot
from metashot._env import data_root
from metashot.data.preprocess import to_float


def write_photos(folder: Path, scale_to: tuple[int, int] | None) -> tuple[list[Path], list[str], list[Path]]:
    z = zipfile.ZipFile(data_root() / "flowers102" / "flowers102_odd.zip")
    names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
    by: dict[str, list[str]] = {}
    for n in names:
        by.setdefault(n.split("/")[1], []).append(n)
    support, labels, queries = [], [], []
    for c in sorted(by)[:5]:
        for i, n in enumerate(by[c][:20]):
            im = Image.open(io.BytesIO(z.read(n))).convert("RGB")
            if scale_to is not None:
                im = im.resize(scale_to, Image.Resampling.BICUBIC)
            p = folder / f"{c}_{i:02d}.jpg"
            im.save(p, quality=90)
            if i < 5:
                support.append(p)
                labels.append(c)
            else:
                queries.append(p)
    return support, labels, queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="photos")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", help="a candidate instead of --model: timm model(s) joined by '+'")
    ap.add_argument("--image-size", type=int, default=160, help="the candidate's input size")
    ap.add_argument("--head", default="ncm", help="the candidate's head, name or name:key=value,...")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16", "onnx"],
                    help="default: the model's own (auto for a candidate)")
    ap.add_argument("--out", help="append the JSON line to this file")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    if a.models:
        clf = candidate(a.models, a.image_size, a.head, a.precision or "auto")
    else:
        clf = metashot.load(a.model)
        if a.precision is not None:
            clf.learner.backbone.precision = a.precision
    load_s = time.perf_counter() - t0
    bb = clf.learner.backbone
    out = {"model": a.models or a.model, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "load_s": round(load_s, 3), "torch": torch.__version__,
           "precision": "onnx-float32" if bb.runs_onnx() else str(bb.compute_dtype()).replace("torch.", "")}
    if a.models:
        out.update(models=a.models, head=a.head)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for tag, size in (("jpeg128", None), ("phone12mp", (3024, 4032))):
            folder = Path(tmp) / tag
            folder.mkdir()
            support, labels, queries = write_photos(folder, size)
            times = []
            for r in range(a.repeats + 1):
                t = time.perf_counter()
                clf.fit(support, labels)
                pred = clf.predict(queries)
                if r:
                    times.append(time.perf_counter() - t)
            truth = [p.name.rsplit("_", 1)[0] for p in queries]
            acc = sum(p == q for p, q in zip(pred, truth, strict=True)) / len(truth)
            out[f"fit25_predict75_s_{tag}"] = round(statistics.median(times), 3)
            out[f"fit25_predict75_s_{tag}_all"] = [round(t, 3) for t in times]
            out[f"accuracy_{tag}"] = round(acc, 4)
    spec = clf.image_spec
    x = to_float(torch.randint(0, 256, (64, spec.channels, spec.size, spec.size), dtype=torch.uint8))
    with torch.inference_mode():
        bb.features(x[:8])
        t = time.perf_counter()
        n = 0
        while time.perf_counter() - t < 5 or n < 128:
            bb.features(x)
            n += len(x)
        out["embed_images_per_s"] = round(n / (time.perf_counter() - t), 1)
    out["input_size"] = spec.size
    out["fit_predict_s"] = out["fit25_predict75_s_jpeg128"]
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["loadavg_start_end"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(out))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(out) + "\n")


def candidate(models: str, size: int, head: str, precision: str) -> metashot.FewShotClassifier:
    """A photo-model candidate of the choice: frozen EfficientNet-Lite(s) at ``size``, power 0.5, support
    centring, temperature 10, ``head``, built as metashot.load builds `photos`."""
    from metashot.algorithms.simpleshot import SimpleShot
    from metashot.nn.pretrained import TimmBackbone

    sys.path.insert(0, str(Path(__file__).parent))
    from heads_eval import parse_head

    names = models.split("+")
    bb = TimmBackbone(names if len(names) > 1 else names[0], power=0.5, image_size=size, precision=precision)
    name, args = parse_head(head)
    learner = SimpleShot(bb, centre="support", temperature=10.0, head=name, head_args=args).eval()
    return metashot.FewShotClassifier(learner, bb.image_spec)


if __name__ == "__main__":
    main()
