"""`metashot app` in headless Chromium: seconds from clicking "Classify" to the gallery showing every photo.

The page runs in this process (``metashot.app.page.launch``, 127.0.0.1, a free port), driven by Playwright
with Debian's chromium, as tests/app/test_app_browser.py does. Photos: Flowers-102 JPEGs from
``$METASHOT_DATA/flowers102/flowers102_odd.zip`` (128x128 as stored; ``--size`` re-encodes them at that many
pixels wide, quality 90), ``--ways`` classes, ``--shots`` support photos each (added in one "Add" as a zip of
class folders) and ``--queries`` query photos in all (dropped at once).

Measured (wall clock in this process, which drives the browser):
Each of ``--repeats`` rounds opens a fresh browser tab (its own classes; the model stays loaded in the process
after the first round), adds the support zip and uploads the queries, then clicks "Classify":
- ``add_s``: "Add to class" clicked -> the status line reports the photos added (the first round also loads
  the model);
- ``classify_s``: "Classify" clicked (query photos already uploaded) -> the gallery shows all ``--queries``
  captions and the status line says "Classified"; the first round and the median of all are reported;
- ``accuracy``: the gallery's labels against the photos' classes.

    python benchmarks/app/classify_bench.py                 # 5 classes x 5 photos, 75 queries, 3 clicks
    python benchmarks/app/classify_bench.py --size 1024     # larger photos

Prints one JSON line. Target (issue 28): classify_s <= 4 s for 25 support + 75 queries on this CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

TIMEOUT_MS = 180_000


def photos(data: Path, dest: Path, ways: int, per: int, size: int | None) -> dict[str, list[Path]]:
    """``per`` photos of each of the first ``ways`` Flowers-102 classes: ``dest/<class>/<class>_<i>.jpg``."""
    from PIL import Image

    archive = data / "flowers102" / "flowers102_odd.zip"
    if not archive.is_file():
        sys.exit(f"classify_bench: {archive} is missing; set METASHOT_DATA to the data folder")
    by: dict[str, list[str]] = {}
    with zipfile.ZipFile(archive) as z:
        for n in sorted(z.namelist()):
            parts = n.split("/")
            if len(parts) == 3 and parts[2].endswith(".jpg"):
                by.setdefault(parts[1][4:], []).append(n)
        out: dict[str, list[Path]] = {}
        for c in sorted(by)[:ways]:
            (dest / c).mkdir(parents=True)
            out[c] = []
            for i, n in enumerate(by[c][:per]):
                f = dest / c / f"{c}_{i}.jpg"
                if size:
                    im = Image.open(io.BytesIO(z.read(n))).convert("RGB")
                    im.resize((size, size * im.height // im.width), Image.BICUBIC).save(f, quality=90)
                else:
                    f.write_bytes(z.read(n))
                out[c].append(f)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--queries", type=int, default=75, help="in all, spread evenly over the classes")
    ap.add_argument("--size", type=int, default=None, help="longer side in pixels (default: as stored, 128)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="photos")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    a = ap.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch
    from playwright.sync_api import sync_playwright

    from metashot.app.page import launch

    if a.threads:
        torch.set_num_threads(a.threads)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("classify_bench: chromium is missing: apt-get install -y chromium")
    data = Path(os.environ.get("METASHOT_DATA", Path.home() / ".cache" / "metashot" / "data"))
    per_class = a.shots + -(-a.queries // a.ways)
    work = Path(tempfile.mkdtemp(prefix="metashot-app-bench-"))
    load_start = os.getloadavg()[0]
    try:
        got = photos(data, work / "photos", a.ways, per_class, a.size)
        support = work / "support.zip"
        with zipfile.ZipFile(support, "w") as z:
            for c, files in got.items():
                for f in files[: a.shots]:
                    z.write(f, f"{c}/{f.name}")
        queries = [f for i in range(per_class - a.shots) for files in got.values()
                   if len(files) > a.shots + i for f in [files[a.shots + i]]][: a.queries]
        truth = {f.name: c for c, files in got.items() for f in files}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo = launch(port=port, block=False, max_photo_mb=25)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
                adds, times, labels, status_add, status_classify = [], [], [], "", ""
                for _ in range(a.repeats):  # a fresh tab each round: its own classes
                    page = browser.new_page(viewport={"width": 1280, "height": 1000})
                    page.goto(demo.local_url)
                    page.wait_for_selector("#add-class", timeout=TIMEOUT_MS)
                    if a.model != "photos":
                        page.fill("#photo-model input", a.model)
                        page.keyboard.press("Enter")
                    page.set_input_files("#class-photos input[type=file]", [str(support)])
                    page.locator('#class-photos td.filename[aria-label="support.zip"]').wait_for(
                        timeout=TIMEOUT_MS)
                    t0 = time.perf_counter()
                    page.click("#add-class")
                    page.wait_for_function(
                        "() => document.querySelector('#status').innerText.includes('Added')",
                        timeout=TIMEOUT_MS)
                    adds.append(time.perf_counter() - t0)
                    status_add = page.inner_text("#status")
                    page.set_input_files("#query-photos input[type=file]", [str(q) for q in queries])
                    page.locator(f'#query-photos td.filename[aria-label="{queries[-1].name}"]').wait_for(
                        timeout=TIMEOUT_MS)
                    t0 = time.perf_counter()
                    page.click("#classify")
                    page.wait_for_function(
                        "n => document.querySelectorAll('#gallery .thumbnail-item .caption-label')"
                        ".length === n"
                        " && document.querySelector('#status').innerText.includes('Classified')",
                        arg=len(queries), timeout=TIMEOUT_MS)
                    times.append(time.perf_counter() - t0)
                    js = "bs => bs.map(b => [b.querySelector('img').src, " \
                         "b.querySelector('.caption-label').innerText])"
                    labels = page.eval_on_selector_all("#gallery .thumbnail-item", js)
                    status_classify = page.inner_text("#status")
                    page.close()
                browser.close()
        finally:
            demo.close()
        right = sum(truth.get(src.rsplit("/", 1)[-1]) == cap.split(" · ")[0] for src, cap in labels)
        print(json.dumps({
            "bench": "app_classify", "model": a.model, "ways": a.ways, "shots": a.shots,
            "support": a.ways * a.shots, "queries": len(queries), "photo_px": a.size or 128,
            "add_s_first": round(adds[0], 3), "add_s_median": round(statistics.median(adds), 3),
            "classify_s_first": round(times[0], 3), "classify_s_median": round(statistics.median(times), 3),
            "classify_s": [round(t, 3) for t in times],
            "gallery_items": len(labels), "accuracy": round(right / max(1, len(labels)), 4),
            "status_after_add": status_add, "status_after_classify": status_classify,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "cpu": platform.processor(),
            "loadavg_start": round(load_start, 2), "loadavg_end": round(os.getloadavg()[0], 2),
            "target_s": 4.0}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
