"""Backend of ``metashot data verify``: which datasets are under the data root and whether they check out.

:func:`verify_all` returns one entry per dataset file or folder, ``{"status": ..., "detail": ...}``, status:

- ``ok``: present, and its structure (layout, class and image counts, zip CRCs) is what metashot expects;
- ``missing``: absent; detail says what to place where (absent data is not an error: only the datasets a run
  uses are needed);
- ``bad``: present but broken or unexpected; detail names the file and the numbers that are wrong.

When the data root holds a ``SHA256SUMS`` file (``<sha256>  <relative path>`` per line, as the shared data
folder does), every file it lists is hashed and compared: entry ``SHA256SUMS``.

Nothing here decodes a whole dataset: checks read zip directories and CRCs, csv files and a sample image, so a
full verification takes about a second.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metashot._env import data_root
from metashot.digest import file_digest

Report = dict[str, dict[str, str]]

# (alphabets, characters, images) of the official Omniglot sets; every character has 20 drawers.
OMNIGLOT_COUNTS = {
    "images_background": (30, 964, 19280),
    "images_evaluation": (20, 659, 13180),
    "images_background_small1": (5, 136, 2720),
    "images_background_small2": (5, 156, 3120),
}
OMNIGLOT_DRAWERS = 20
LAKE_RUNS = 20
LAKE_WAYS = 20
MINI_IMAGENET_CLASSES = {"train": 64, "val": 16, "test": 20}
MINI_IMAGENET_PER_CLASS = 600  # the full set; the shared sample keeps the first 60 of each class

# Text datasets: files whose presence (non-empty) is checked, relative to <root>/text/<name>.
TEXT_FILES: dict[str, list[str]] = {
    "clinc150": ["data_full.json"],
    "banking77": ["train.csv", "test.csv"],
    "hwu64": [f"processed_jianguoz/{s}/{f}" for s in ("train", "valid", "test") for f in ("seq.in", "label")],
    "splits/protaugment": [f"{d}/{k:02d}/labels.{s}.txt" for d in ("BANKING77", "HWU64", "OOS")
                           for k in range(1, 6) for s in ("train", "valid", "test")],
    "splits/fullway": [f"{d}/train_{n}/{f}" for d in ("BANKING77", "CLINC150") for n in (5, 10)
                       for f in ("seq.in", "label")],
}


class _Bad(Exception):
    """A check failed; the message is the entry's detail."""


def _entry(status: str, detail: str) -> dict[str, str]:
    return {"status": status, "detail": detail}


def _located(locate: Callable[[Path], Path], root: Path, check: Callable[[Path], str]) -> dict[str, str]:
    """``check(src)`` of the dataset file ``locate(root)`` finds; a missing file is reported as missing."""
    try:
        src = locate(root)
    except FileNotFoundError as e:
        return _entry("missing", str(e))
    return _run(lambda: check(src))


def _run(check: Callable[[], str]) -> dict[str, str]:
    """Run one check: its return value is an ok detail; _Bad or any error reading the data means bad."""
    try:
        return _entry("ok", check())
    except _Bad as e:
        return _entry("bad", str(e))
    except Exception as e:  # a broken file must give a report line, never a traceback
        return _entry("bad", f"{type(e).__name__}: {e}")


def _test_zip(path: Path) -> zipfile.ZipFile:
    """Open ``path`` and check every member's CRC; raises _Bad naming the file and the first bad member."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise _Bad(f"{path} is not a readable zip file ({e})") from e
    try:
        first_bad = zf.testzip()
    except Exception as e:
        zf.close()
        raise _Bad(f"{path}: cannot read its members ({type(e).__name__}: {e})") from e
    if first_bad is not None:
        zf.close()
        raise _Bad(f"{path}: member {first_bad} is corrupt (CRC mismatch)")
    return zf


# ----------------------------------------------------------------------------------------------- Omniglot


def _check_omniglot_part(src: Path, part: str) -> str:
    from metashot.data.omniglot import _list_images

    if src.is_file():
        _test_zip(src).close()
    try:
        entries = _list_images(src, part)
    except ValueError as e:
        raise _Bad(str(e)) from e
    per_char: dict[tuple[str, str], int] = {}
    for alpha, char, _ in entries:
        per_char[(alpha, char)] = per_char.get((alpha, char), 0) + 1
    alphabets = len({a for a, _ in per_char})
    found = (alphabets, len(per_char), len(entries))
    expected = OMNIGLOT_COUNTS[part]
    if found != expected:
        raise _Bad(f"{src}: {found[0]} alphabets / {found[1]} characters / {found[2]} images, expected "
                   f"{expected[0]} / {expected[1]} / {expected[2]}; the file is incomplete or not {part}")
    odd = {k: v for k, v in per_char.items() if v != OMNIGLOT_DRAWERS}
    if odd:
        (a, c), n = next(iter(odd.items()))
        raise _Bad(f"{src}: character {a}/{c} has {n} images, expected {OMNIGLOT_DRAWERS} "
                   f"({len(odd)} characters differ)")
    kind = "zip" if src.is_file() else "folder"
    return f"{kind}: {found[0]} alphabets, {found[1]} characters, {found[2]} images"


def _check_lake_runs(src: Path) -> str:
    """all_runs: run01..run20, each with class_labels.txt, training/classNN.png and test/itemNN.png."""
    if src.is_file():
        zf = _test_zip(src)
        names = set(zf.namelist())

        def read(rel: str) -> str | None:
            return zf.read(rel).decode() if rel in names else None
    else:
        zf = None
        names = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}

        def read(rel: str) -> str | None:
            return (src / rel).read_text() if rel in names else None
    try:
        for r in range(1, LAKE_RUNS + 1):
            run = f"run{r:02d}"
            labels = read(f"{run}/class_labels.txt")
            if labels is None:
                raise _Bad(f"{src}: {run}/class_labels.txt is missing")
            pairs = [ln.split() for ln in labels.splitlines() if ln.strip()]
            if len(pairs) != LAKE_WAYS or any(len(p) != 2 for p in pairs):
                raise _Bad(f"{src}: {run}/class_labels.txt has {len(pairs)} lines, expected {LAKE_WAYS} "
                           f"lines 'test/itemNN.png training/classNN.png'")
            for p in (x for pair in pairs for x in pair):
                rel = p if p.startswith(f"{run}/") else f"{run}/{p}"
                if rel not in names:
                    raise _Bad(f"{src}: {rel} (listed in {run}/class_labels.txt) is missing")
    finally:
        if zf is not None:
            zf.close()
    return f"{'zip' if src.is_file() else 'folder'}: {LAKE_RUNS} runs x {LAKE_WAYS} ways, all images present"


def _check_vinyals(base: Path) -> str:
    """Every character of the packaged Vinyals split lists exists in images_background + images_evaluation."""
    from metashot.data.omniglot import _list_images, vinyals_split

    have: set[str] = set()
    for part in ("images_background", "images_evaluation"):
        src = base / f"{part}.zip" if (base / f"{part}.zip").exists() else base / part
        have |= {f"{a}/{c}" for a, c, _ in _list_images(src, part)}
    sizes = []
    for split in ("train", "val", "test"):
        chars = {n.rsplit("/", 1)[0] for n in vinyals_split(split)}
        missing = sorted(chars - have)
        if missing:
            raise _Bad(f"Vinyals {split} split: {len(missing)} of {len(chars)} characters are not in the "
                       f"data, e.g. {missing[:3]}")
        sizes.append(len(chars))
    return f"train/val/test = {sizes[0]}/{sizes[1]}/{sizes[2]} characters (x4 rotations), all present"


# ------------------------------------------------------------------------------------------- mini-ImageNet


def _check_flowers(root: Path) -> dict[str, str]:
    from metashot.data import flowers102 as fl

    def check(src: Path) -> str:
        listing = fl._listing(src)
        counts = [len(v) for v in listing.values()]
        if min(counts) < 20:
            small = min(listing, key=lambda k: len(listing[k]))
            raise _Bad(f"{src}: class {small} has only {len(listing[small])} images")
        return f"{len(listing)} classes, {sum(counts)} images ({min(counts)}-{max(counts)} per class)"

    return _located(fl.locate, root, check)


def _check_mini_imagenet(root: Path) -> dict[str, str]:
    from metashot.data import mini_imagenet as mi

    def check(src: Path) -> str:
        if src.is_file():
            _test_zip(src).close()
        s = mi._Source(src)
        try:
            if s.zf is not None:
                members = set(s.zf.namelist())
                have = {n[len(s.prefix) + len("images/"):] for n in members
                        if n.startswith(s.prefix + "images/") and not n.endswith("/")}
            else:
                have = {p.name for p in (src / "images").iterdir()} if (src / "images").is_dir() else set()
            seen: dict[str, str] = {}
            parts, per_class = [], set()
            for split, n_expected in MINI_IMAGENET_CLASSES.items():
                rows = s.read_csv(split)
                by_class: dict[str, int] = {}
                for fn, label in rows:
                    if fn not in have:
                        raise _Bad(f"{src}: images/{fn} (listed in {split}.csv) is missing")
                    by_class[label] = by_class.get(label, 0) + 1
                if len(by_class) != n_expected:
                    raise _Bad(f"{src}: {split}.csv has {len(by_class)} classes, expected {n_expected}")
                for label in by_class:
                    if label in seen:
                        raise _Bad(f"{src}: class {label} is in both {seen[label]}.csv and {split}.csv")
                    seen[label] = split
                counts = set(by_class.values())
                if len(counts) != 1:
                    raise _Bad(f"{src}: {split}.csv classes have unequal image counts {sorted(counts)}")
                per_class |= counts
                parts.append(f"{split} {len(by_class)}x{counts.pop()}")
                first = rows[0][0]
            im = s.open_image(first)
            if im.size != (84, 84) or im.mode != "RGB":
                raise _Bad(f"{src}: images/{first} is {im.size[0]}x{im.size[1]} {im.mode}, "
                           f"expected 84x84 RGB")
        finally:
            s.close()
        kind = "full" if per_class == {MINI_IMAGENET_PER_CLASS} else "sample"
        return f"{'zip' if src.is_file() else 'folder'} ({kind}): " + ", ".join(parts) + " classes x images"

    return _located(mi.locate, root, check)


# ----------------------------------------------------------------------------------------- text, checksums


def _check_text(base: Path, name: str, files: list[str]) -> dict[str, str]:
    folder = base / name
    if not folder.is_dir():
        return _entry("missing", f"{folder} not found; place the {name} files there "
                                 f"({', '.join(files[:3])}...)")
    absent = [f for f in files if not (folder / f).is_file()]
    if absent:
        return _entry("bad", f"{folder}: {len(absent)} of {len(files)} files missing, e.g. {absent[:3]}")
    empty = [f for f in files if (folder / f).stat().st_size == 0]
    if empty:
        return _entry("bad", f"{folder}: {len(empty)} files are empty, e.g. {empty[:3]}")
    if name == "hwu64":  # one utterance per label line
        for s in ("train", "valid", "test"):
            d = folder / "processed_jianguoz" / s
            n_in = len((d / "seq.in").read_text().splitlines())
            n_lab = len((d / "label").read_text().splitlines())
            if n_in != n_lab:
                return _entry("bad", f"{d}: seq.in has {n_in} lines but label has {n_lab}")
    return _entry("ok", f"{len(files)} files present")


def check_sha256sums(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Compare every file listed in ``<root>/SHA256SUMS``.

    Returns:
        (summary entry, {relative path: "ok" | "bad" | "missing"}).
    """
    sums = root / "SHA256SUMS"
    per_file: dict[str, str] = {}
    problems = []
    for i, line in enumerate(sums.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            return _entry("bad", f"{sums} line {i} is not '<sha256>  <path>': {line!r}"), per_file
        digest, rel = parts[0].lower(), parts[1].strip().lstrip("*")
        path = root / rel
        if not path.is_file():
            per_file[rel] = "missing"
            problems.append(f"{rel} missing")
        elif file_digest(path, "sha256") != digest:
            per_file[rel] = "bad"
            problems.append(f"{rel} sha256 mismatch")
        else:
            per_file[rel] = "ok"
    if problems:
        return _entry("bad", f"{sums}: {len(problems)} of {len(per_file)} files fail: {problems}"), per_file
    return _entry("ok", f"{len(per_file)} files match {sums}"), per_file


# ----------------------------------------------------------------------------------------------- all


def verify_all(root: str | Path | None = None, checksums: bool = True) -> Report:
    """Check every dataset metashot knows under ``root`` (default ``$METASHOT_DATA``).

    Returns:
        ``{name: {"status": "ok" | "missing" | "bad", "detail": str}}`` with names such as
        ``omniglot/images_background``, ``omniglot/all_runs``, ``omniglot/vinyals_split``, ``mini_imagenet``,
        ``text/clinc150`` and, when ``<root>/SHA256SUMS`` exists and ``checksums``, ``SHA256SUMS``.
    """
    root = Path(root) if root is not None else data_root()
    report: Report = {}
    if not root.is_dir():
        report["data_root"] = _entry("missing", f"data root {root} does not exist; set METASHOT_DATA or "
                                                f"pass --root")
    omni = root / "omniglot"
    for part in OMNIGLOT_COUNTS:
        name = f"omniglot/{part}"
        src = next((c for c in (omni / f"{part}.zip", omni / part) if c.exists()), None)
        if src is None:
            report[name] = _entry("missing", f"place {part}.zip (or its extracted folder) in {omni}; "
                                             f"metashot downloads the official zip when a run needs it")
        else:
            report[name] = _run(lambda src=src, part=part: _check_omniglot_part(src, part))
    runs = next((c for c in (omni / "all_runs.zip", omni / "all_runs") if c.exists()), None)
    report["omniglot/all_runs"] = (_run(lambda: _check_lake_runs(runs)) if runs is not None else
                                   _entry("missing", f"place all_runs.zip (Lake's one-shot runs) in {omni}"))
    if all(report[f"omniglot/{p}"]["status"] == "ok" for p in ("images_background", "images_evaluation")):
        report["omniglot/vinyals_split"] = _run(lambda: _check_vinyals(omni))
    else:
        report["omniglot/vinyals_split"] = _entry(
            "missing", "not checked: needs images_background and images_evaluation to be ok")
    report["mini_imagenet"] = _check_mini_imagenet(root)
    report["flowers102"] = _check_flowers(root)
    for name, files in TEXT_FILES.items():
        report[f"text/{name}"] = _check_text(root / "text", name, files)
    if checksums and (root / "SHA256SUMS").is_file():
        summary, per_file = _run_sums(root)
        report["SHA256SUMS"] = summary
        _mark_checksums(report, per_file)
    return report


def _run_sums(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    try:
        return check_sha256sums(root)
    except Exception as e:
        return _entry("bad", f"{root / 'SHA256SUMS'}: {type(e).__name__}: {e}"), {}


def _mark_checksums(report: Report, per_file: dict[str, Any]) -> None:
    """A dataset whose archive fails its listed sha256 is bad; one that matches says so in its detail."""
    for rel, status in per_file.items():
        stem = rel[: -len(".zip")] if rel.endswith(".zip") else rel
        name = stem if stem in report else next(
            (d for d in ("mini_imagenet", "flowers102") if rel.startswith(f"{d}/")), None)
        if name is None or report[name]["status"] == "missing":
            continue
        if status == "ok":
            report[name]["detail"] += "; sha256 ok"
        else:
            report[name] = _entry("bad", f"{rel}: sha256 {status} (SHA256SUMS); " + report[name]["detail"])



def print_report(root: str | None, as_json: bool) -> int:
    """``metashot data verify``: print :func:`verify_all`'s report (JSON or a line per dataset); the exit code
    is 1 when a present dataset fails its check, else 0."""
    import json

    report = verify_all(root)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        for name, r in report.items():
            print(f"{name:34s} {r['status']:8s} {r.get('detail', '')}")
    return 0 if all(r["status"] in ("ok", "missing") for r in report.values()) else 1
