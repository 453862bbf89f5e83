"""`metashot predict` on a folder of N photos (default 10,000): wall time, peak RSS, rows; an interruption.

Photos: Flowers-102 `test`-class JPEGs (classes numbered 3 mod 4) of ``--ways`` classes; the first ``--shots``
of each class are the support set, the others are copied into the query folder until it holds N files, each
copy jittered (random crop of 85-100 %, a mirror half the time, resized to ``--size``, JPEG quality 75-95), so
every file decodes to different pixels. The folder is written under a temporary directory outside the
repository (``--workdir`` to keep / reuse it).

Measured, each `metashot predict` run a subprocess (peak RSS from ``os.wait4``'s rusage: the child's own):
1. the full run: wall time, peak RSS MiB, rows written, whether every query has exactly one row in order, the
   accuracy of the labels, whether stderr holds the progress bar;
2. the header check alone (in this process): seconds for ``check_files`` over the N queries;
3. an interruption: a fresh run is sent ``--signal`` once ``--kill-at`` of the N rows are in its CSV; then
   ``--resume`` completes it: rows kept, rows recomputed, duplicates, missing files, and whether the final CSV
   has the same labels (and confidences within 1e-3) as the full run.

    python benchmarks/photos/folder_bench.py                       # N = 10,000, one torch thread
    python benchmarks/photos/folder_bench.py --n 500 --threads 2   # a quick look

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from PIL import Image

from metashot._env import data_root
from metashot.predict_folder import check_files


def write_photos(root: Path, n: int, ways: int, shots: int, size: tuple[int, int] | None,
                 seed: int) -> tuple[Path, Path]:
    """``root/support/<class>/*.jpg`` and ``root/query/<i>_<class>.jpg`` (n files); returns both folders."""
    z = zipfile.ZipFile(data_root() / "flowers102" / "flowers102_odd.zip")
    by: dict[str, list[str]] = {}
    for name in sorted(z.namelist()):
        parts = name.split("/")
        if len(parts) == 3 and parts[2].endswith(".jpg") and int(parts[1][:3]) % 4 == 3:
            by.setdefault(parts[1], []).append(name)
    classes = sorted(by)[:ways]
    support, query = root / "support", root / "query"
    sources: list[tuple[str, Image.Image]] = []
    for c in classes:
        (support / c).mkdir(parents=True)
        for i, name in enumerate(by[c]):
            im = Image.open(io.BytesIO(z.read(name))).convert("RGB")
            if i < shots:
                (im.resize(size, Image.Resampling.BICUBIC) if size else im).save(support / c / f"{i}.jpg",
                                                                                 quality=90)
            else:
                sources.append((c, im))
    query.mkdir()
    rng = random.Random(seed)
    for i in range(n):
        c, im = sources[i % len(sources)]
        w, h = im.size
        f = rng.uniform(0.85, 1.0)
        cw, ch = int(w * f), int(h * f)
        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
        out = im.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out = out.resize(size or (w, h), Image.Resampling.BICUBIC)
        out.save(query / f"{i:06d}_{c}.jpg", quality=rng.randint(75, 95))
    return support, query


def run(args: list[str], env: dict[str, str], log: Path, out: Path | None = None, kill_at: int | None = None,
        sig: int = signal.SIGTERM) -> dict[str, float | int | bool]:
    """Run ``metashot predict`` with ``args``; with ``kill_at``, send ``sig`` once ``out`` has that many rows.
    Returns wall seconds, the child's peak RSS (MiB), its exit status and the rows seen when it was killed."""
    t0 = time.perf_counter()
    with open(log, "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "metashot.cli", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=err)
        killed_at = None
        while kill_at is not None and killed_at is None:
            rows = _count_rows(out) if out is not None and out.exists() else 0
            if rows >= kill_at:
                p.send_signal(sig)
                killed_at = rows
            elif p.poll() is not None:
                break
            time.sleep(0.2)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "rc": p.returncode, "rows_when_killed": killed_at if killed_at is not None else -1}


def _commit() -> str:
    """The repository's HEAD (with "+dirty" when files differ from it), for the record."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _count_rows(path: Path) -> int:
    return max(0, path.read_bytes().count(b"\n") - 1)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="query photos (default 10,000)")
    ap.add_argument("--model", default="photos")
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--size", default="800x600", help="WxH of every photo, or 'asis' (Flowers' 128 px files)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the predict runs (default 1)")
    ap.add_argument("--kill-at", type=float, default=0.4, help="interrupt once this fraction of rows is in")
    ap.add_argument("--signal", choices=["TERM", "INT"], default="TERM")
    ap.add_argument("--workdir", help="folder for the photos and CSVs (default: a temporary one, removed)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    size = None if a.size == "asis" else tuple(int(v) for v in a.size.split("x"))
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="metashot-folder-bench-"))
    res: dict[str, object] = {"benchmark": "predict_folder", "model": a.model, "n": a.n, "ways": a.ways,
                              "shots": a.shots, "size": a.size, "batch_size": a.batch_size,
                              "threads": a.threads,
                              "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                              "precision_env": os.environ.get("METASHOT_PRECISION"), "commit": _commit()}
    try:
        t0 = time.perf_counter()
        if not (work / "query").is_dir():
            work.mkdir(parents=True, exist_ok=True)
            write_photos(work, a.n, a.ways, a.shots, size, a.seed)
        support, query = work / "support", work / "query"
        queries = sorted(query.iterdir())
        if len(queries) != a.n:
            raise SystemExit(f"{query} holds {len(queries)} files, not --n {a.n}; use another --workdir")
        res["generate_s"] = round(time.perf_counter() - t0, 1)
        res["query_mib"] = round(sum(q.stat().st_size for q in queries) / 2**20, 1)
        t = time.perf_counter()
        bad = check_files(queries)
        res["header_check_s"], res["header_check_unreadable"] = round(time.perf_counter() - t, 2), len(bad)

        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
        base = ["predict", a.model, "--support", str(support), "--query", str(query),
                "--batch-size", str(a.batch_size)]
        full_csv, cut_csv = work / "full.csv", work / "interrupted.csv"
        for p in (full_csv, cut_csv):
            p.unlink(missing_ok=True)
        full = run([*base, "--output", str(full_csv)], env, work / "full.log")
        rows = read_rows(full_csv)
        names = [Path(r["file"]).name for r in rows]
        truth = [n.split("_", 1)[1].rsplit(".", 1)[0] for n in names]
        order = [q.name for q in queries]
        res["full"] = {**full, "rows": len(rows), "rows_complete_in_order": names == order,
                       "accuracy": round(sum(r["label"] == c for r, c in zip(rows, truth, strict=True))
                                         / max(1, len(rows)), 4),
                       "progress_bar": "img/s" in (work / "full.log").read_text(errors="replace")}

        sig = signal.SIGTERM if a.signal == "TERM" else signal.SIGINT
        first = run([*base, "--output", str(cut_csv)], env, work / "interrupted.log", out=cut_csv,
                    kill_at=max(1, int(a.kill_at * a.n)), sig=sig)
        kept_bytes = cut_csv.read_bytes()
        kept = len(read_rows(cut_csv)) if kept_bytes.endswith(b"\n") else max(0, _count_rows(cut_csv))
        resumed = run([*base, "--output", str(cut_csv), "--resume"], env, work / "resume.log")
        final = read_rows(cut_csv)
        fnames = [Path(r["file"]).name for r in final]
        want = {q.name for q in queries}
        same = len(final) == len(rows) and all(
            f["file"] == r["file"] and f["label"] == r["label"]
            and abs(float(f["confidence"] or 0) - float(r["confidence"] or 0)) <= 1e-3
            for f, r in zip(final, rows, strict=False))
        res["interrupt"] = {"signal": a.signal, **{f"killed_{k}": v for k, v in first.items()},
                            "rows_kept": kept, "cut_last_line": not kept_bytes.endswith(b"\n"),
                            "resume_wall_s": resumed["wall_s"],
                            "resume_peak_rss_mib": resumed["peak_rss_mib"],
                            "resume_rc": resumed["rc"], "rows_recomputed": len(final) - kept,
                            "rows_final": len(final), "duplicates": len(fnames) - len(set(fnames)),
                            "missing": len(want - set(fnames)), "in_order": fnames == order,
                            "same_as_full_run": same}
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    res["loadavg_start_end"] = [round(load0, 2), round(os.getloadavg()[0], 2)]  # other work on the CPUs
    print(json.dumps(res))


if __name__ == "__main__":
    main()
