"""A saved ``photos`` classifier (``--ways`` classes x ``--shots`` photos) loads and predicts one photo
from a cold process.

Set-up (this process, not timed): Flowers-102 JPEGs from ``$METASHOT_DATA/flowers102/flowers102_odd.zip``
(128x128 as stored), ``metashot.load("photos").fit(...)`` on them, ``clf.save(folder)``. Then, ``--repeats``
times, a fresh ``python`` subprocess runs ``import metashot; metashot.load(folder).predict([photo])`` and
prints its own timings; this process times the whole subprocess (``wall_s``: interpreter start to exit,
the figure a user waits for). The operating system's file cache is warm after the set-up (the same files were
just read), so "cold" means a new process, not a cold disk.

    python benchmarks/app/load_predict_bench.py              # 10 classes x 5 photos, 5 runs
    python benchmarks/app/load_predict_bench.py --path full  # the same with metashot.load(..., lite=False)
    python benchmarks/app/load_predict_bench.py --path cli   # `metashot predict FOLDER --query PHOTO --quiet`

``--path lite`` (default) is what ``metashot.load(folder)`` does: a LiteClassifier, no torch (metashot.lite);
``--path full`` loads the full FewShotClassifier (torch, the model, its digest check).

Prints one JSON line. Target (issue 28): wall_s <= 1.5 s.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

CHILD = """
import time, json, sys
t0 = time.perf_counter()
import metashot
t1 = time.perf_counter()
clf = metashot.load({folder!r}, lite={lite})
t2 = time.perf_counter()
label = clf.predict([{photo!r}])[0]
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "predict_s": t3 - t2, "label": str(label),
                  "classifier": type(clf).__name__, "torch_imported": "torch" in sys.modules}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ways", type=int, default=10)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--path", choices=("lite", "full", "cli"), default="lite")
    a = ap.parse_args()
    import metashot

    data = Path(os.environ.get("METASHOT_DATA", Path.home() / ".cache" / "metashot" / "data"))
    archive = data / "flowers102" / "flowers102_odd.zip"
    if not archive.is_file():
        sys.exit(f"load_predict_bench: {archive} is missing; set METASHOT_DATA to the data folder")
    work = Path(tempfile.mkdtemp(prefix="metashot-load-bench-"))
    load_start = os.getloadavg()[0]
    try:
        by: dict[str, list[str]] = {}
        with zipfile.ZipFile(archive) as z:
            for n in sorted(z.namelist()):
                parts = n.split("/")
                if len(parts) == 3 and parts[2].endswith(".jpg"):
                    by.setdefault(parts[1][4:], []).append(n)
            files, labels = [], []
            for c in sorted(by)[: a.ways]:
                for i, n in enumerate(by[c][: a.shots + 1]):
                    f = work / f"{c}_{i}.jpg"
                    f.write_bytes(z.read(n))
                    if i < a.shots:
                        files.append(str(f))
                        labels.append(c)
                    else:
                        query, truth = str(f), c  # one photo of the last class, not in the support set
        clf = metashot.load("photos").fit(files, labels)
        folder = work / "my-classifier"
        clf.save(folder)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        runs = []
        env = dict(os.environ, METASHOT_QUIET="1")
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            if a.path == "cli":  # the console script, as a person types it; its CSV's one row
                cmd = [str(Path(sys.executable).with_name("metashot")), "predict", str(folder), "--query",
                       query, "--quiet"]
            else:
                child_code = CHILD.format(folder=str(folder), photo=query, lite=a.path == "lite")
                cmd = [sys.executable, "-c", child_code]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            wall = time.perf_counter() - t0
            last = out.stdout.strip().splitlines()[-1]
            child = {"label": next(csv.reader([last]))[1]} if a.path == "cli" else json.loads(last)
            runs.append({"wall_s": round(wall, 3), **{k: round(v, 3) if isinstance(v, float) else v
                                                         for k, v in child.items()}})
        walls = [r["wall_s"] for r in runs]
        print(json.dumps({
            "bench": "app_load_predict", "model": "photos", "path": a.path, "ways": a.ways, "shots": a.shots,
            "saved_bytes": size, "wall_s_median": statistics.median(walls), "wall_s_max": max(walls),
            "runs": runs, "right": all(r["label"] == truth for r in runs), "cpus": os.cpu_count(),
            "cpu": platform.processor(), "loadavg_start": round(load_start, 2),
            "loadavg_end": round(os.getloadavg()[0], 2), "target_s": 1.5}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
