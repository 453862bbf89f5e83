"""Omniglot (Lake et al. 2015): 1,623 handwritten characters from 50 alphabets, 20 drawers each.

Reads the official zips (``images_background.zip``, ``images_evaluation.zip`` and the minimal sets
``images_background_small1.zip`` / ``images_background_small2.zip``) or their extracted folders from
``<root>/omniglot`` (root = ``$METASHOT_DATA``). Missing official files are downloaded and md5-checked; files
the user placed are accepted without the official checksum (re-packed copies differ byte-wise) but their
structure is checked.

Preprocessing (``OMNIGLOT_SPEC``): the 105x105 1-bit PNGs (white background, black ink) are converted to
grayscale, resized to 28x28 with the BOX (area-average) filter, and inverted so that ink is bright (255) on a
dark (0) background. Classes are named ``<Alphabet>/<characterNN>``; with rotations,
``<Alphabet>/<characterNN>/rot090`` etc. Rotations are applied per class (every image of a rotated class is
rotated by the same angle), as in Vinyals et al. 2016 and Snell et al. 2017.

Splits: ``train``/``val``/``test`` are the Vinyals split (1028/172/423 characters x 4 rotations), shipped
with the package; ``background``, ``evaluation``, ``background_small1``, ``background_small2`` are the
official sets without rotation.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from metashot._env import data_root, quiet
from metashot.data.download import DownloadError, download
from metashot.data.preprocess import ImageSpec, preprocess
from metashot.data.store import ClassStore, cached_store

OMNIGLOT_SPEC = ImageSpec(size=28, channels=1, invert=True, resize_filter="box")

BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
BASE_URL_ENV = "METASHOT_OMNIGLOT_URL"  # overrides BASE_URL (a mirror, or a local server in tests)
# md5 of the official zips. small1/small2: the copies in the shared data folder are the original files,
# unchanged (its README), so their md5 is the official one.
OFFICIAL_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
    "images_background_small1": "e704a628b5459e08445c13499850abc4",
    "images_background_small2": "b75a71a51d3b13f821f212756fe481fd",
}
VINYALS_SPLITS = ("train", "val", "test", "trainval")
OFFICIAL_SETS = ("background", "evaluation", "background_small1", "background_small2")
# Validation for Lake's benchmark, from the background set alone (issue 18): five background alphabets held
# out of training. Drawn once, before any model was scored on them, as
# ``sorted(random.Random(2015).sample(ELIGIBLE, 5))`` from the 19 background alphabets that have at least 20
# characters (a 20-way within-alphabet run needs 20) and are in neither minimal set (small1 / small2), so
# models trained on a minimal set never saw them either. ``tests/data/test_lake_val.py`` re-draws them.
LAKE_VAL_ALPHABETS = ("Anglo-Saxon_Futhorc", "Arcadian", "Asomtavruli_(Georgian)", "Hebrew", "Tifinagh")
LAKE_SPLITS = ("background_train", "background_val")  # background minus / only LAKE_VAL_ALPHABETS
_IMG = re.compile(r"(?:^|/)(images_[a-z0-9_]+)/([^/]+)/([^/]+)/([^/]+\.png)$")


def vinyals_split(split: str) -> list[str]:
    """Class names of a Vinyals split (``Alphabet/characterNN/rotDDD``), in the shipped file's order."""
    if split == "trainval":
        return vinyals_split("train") + vinyals_split("val")
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown Vinyals split {split!r}; use one of {VINYALS_SPLITS}")
    text = resources.files("metashot.data").joinpath(f"splits/omniglot/vinyals/{split}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def base_url() -> str:
    """Where missing zips are downloaded from: ``$METASHOT_OMNIGLOT_URL`` if set, else :data:`BASE_URL`."""
    url = os.environ.get(BASE_URL_ENV) or BASE_URL
    return url if url.endswith("/") else url + "/"


def locate(part: str, root: Path | None = None, download_missing: bool = True, url: str | None = None,
           timeout: float = 60.0) -> Path:
    """Path of ``<root>/omniglot/<part>.zip`` or the extracted folder ``<root>/omniglot/<part>/``.

    Downloads the official zip (from ``url``, default :func:`base_url`) when neither exists and
    ``download_missing``, checking its official md5; otherwise raises FileNotFoundError naming the file to
    place and the folder to place it in.
    """
    base = (Path(root) if root is not None else data_root()) / "omniglot"
    for cand in (base / f"{part}.zip", base / part):
        if cand.exists():
            return cand
    if part not in OFFICIAL_MD5:
        raise ValueError(f"unknown Omniglot part {part!r}; use one of {sorted(OFFICIAL_MD5)}")
    src = (url if url is not None else base_url()).rstrip("/") + f"/{part}.zip"
    if not download_missing:
        raise FileNotFoundError(
            f"Omniglot file {part}.zip not found: place {part}.zip (or its extracted folder {part}/) in "
            f"{base} (set METASHOT_DATA to change the data root), or allow downloading from {src}"
        )
    try:
        return download(src, base / f"{part}.zip", OFFICIAL_MD5[part], timeout=timeout)
    except DownloadError as e:
        raise FileNotFoundError(
            f"Omniglot file {part}.zip is missing from {base} and could not be downloaded ({e}). "
            f"Download {src} yourself and place it in {base} (or set METASHOT_DATA to a folder holding "
            f"omniglot/{part}.zip)"
        ) from e


def _list_images(src: Path, part: str) -> list[tuple[str, str, str]]:
    """(alphabet, character, member) for every PNG of ``src``; checks the official structure."""
    entries = []
    others: set[str] = set()
    if src.is_dir():
        for p in sorted(src.rglob("*.png")):
            rel = p.relative_to(src.parent).as_posix()
            m = _IMG.search(rel)
            if m and m.group(1) == part:
                entries.append((m.group(2), m.group(3), str(p)))
            elif m:
                others.add(m.group(1))
    else:
        try:
            with zipfile.ZipFile(src) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"Omniglot: {src} is not a readable zip file ({e}); replace it") from e
        for n in sorted(names):
            m = _IMG.search(n)
            if m and m.group(1) == part:
                entries.append((m.group(2), m.group(3), n))
            elif m:
                others.add(m.group(1))
    if not entries and others:
        raise ValueError(
            f"Omniglot: {src} should hold {part}/<Alphabet>/<characterNN>/*.png but holds {sorted(others)}; "
            f"is it the right file?"
        )
    if not entries:
        raise ValueError(
            f"Omniglot: {src} holds no images in the official layout "
            f"{part}/<Alphabet>/<characterNN>/<id>_<drawer>.png; is it the right file?"
        )
    return entries


def _decode_part(src: Path, part: str, spec: ImageSpec) -> tuple[np.ndarray, list[int], list[str]]:
    entries = _list_images(src, part)
    by_class: dict[str, list[str]] = {}
    for alpha, char, member in entries:
        by_class.setdefault(f"{alpha}/{char}", []).append(member)
    names = sorted(by_class)
    out = np.empty((len(entries), spec.channels, spec.size, spec.size), dtype=np.uint8)
    counts, i = [], 0
    zf = zipfile.ZipFile(src) if src.is_file() else None
    try:
        with tqdm(total=len(entries), desc=f"decode {part}", unit="img", leave=False, disable=quiet()) as bar:
            for name in names:
                members = by_class[name]
                for member in members:
                    try:
                        if zf is not None:
                            with Image.open(io.BytesIO(zf.read(member))) as im:
                                out[i] = preprocess(im, spec)
                        else:
                            out[i] = preprocess(member, spec)
                    except Exception as e:
                        raise ValueError(f"Omniglot: cannot decode {member} in {src}: {e}") from e
                    i += 1
                    bar.update(1)
                counts.append(len(members))
    finally:
        if zf is not None:
            zf.close()
    return out, counts, names


def load_part(part: str, root: Path | None = None, spec: ImageSpec = OMNIGLOT_SPEC,
              download_missing: bool = True, cache_dir: Path | None = None) -> ClassStore:
    """One official set (e.g. ``images_background``) as a cached store of its characters, no rotation."""
    src = locate(part, root, download_missing)
    sources = [src] if src.is_file() else sorted(src.rglob("*.png"))
    return cached_store(
        f"omniglot-{part}-{spec.size}", sources, {"part": part, "spec": spec.to_dict()},
        lambda: _decode_part(src, part, spec),
        meta={"dataset": "omniglot", "part": part, "image_spec": spec.to_dict()}, cache_dir=cache_dir,
    )


def _rotated(store: ClassStore, rotations: Sequence[int]) -> ClassStore:
    angles = [int(a) for a in rotations]
    if not angles or len({a % 360 for a in angles}) != len(angles):
        raise ValueError(f"Omniglot rotations must be distinct angles, got {list(rotations)}")
    return store.with_rotations(angles)


def omniglot(split: str = "train", root: Path | None = None, image_size: int = 28,
             download_missing: bool = True, cache_dir: Path | None = None,
             rotations: Sequence[int] | None = None) -> ClassStore:
    """Omniglot classes of ``split`` as a :class:`ClassStore` of uint8 [M, 1, size, size] images.

    ``split``: ``train``/``val``/``test``/``trainval`` (Vinyals, with rotations as classes) or one of the
    official sets ``background``, ``evaluation``, ``background_small1``, ``background_small2``.
    ``rotations`` (official sets only, e.g. ``[0, 90, 180, 270]``; in a config
    ``data.options.rotations``): add each character rotated by these angles as a class of its own, as the
    Vinyals split does; ``None`` keeps the set as it is. The Vinyals splits always hold the four rotations.
    (In a config the option applies to every split the config loads, so ``metashot eval`` of such a run
    evaluates on the rotated set too; ``metashot lake`` uses Lake's runs and is unaffected.)
    """
    spec = ImageSpec(size=image_size, channels=1, invert=True, resize_filter="box")
    if split in LAKE_SPLITS:
        full = omniglot("background", root, image_size, download_missing, cache_dir)
        val = split == "background_val"
        names = [n for n in full.class_names if (n.split("/", 1)[0] in LAKE_VAL_ALPHABETS) == val]
        store = full.subset(names)
        store.meta = {**full.meta, "name": f"omniglot/{split}", "split": split}
        if rotations is not None:
            store = _rotated(store, rotations)
        return store
    if split in OFFICIAL_SETS:
        store = load_part(f"images_{split}", root, spec, download_missing, cache_dir)
        store.meta.update(name=f"omniglot/{split}", split=split)
        if rotations is not None:
            store = _rotated(store, rotations)
        return store
    if rotations is not None:
        raise ValueError(f"Omniglot split {split!r} (Vinyals) always holds the rotations 0/90/180/270; "
                         "the rotations option is for the official sets (background, evaluation, ...)")
    names = vinyals_split(split)
    needed = ("images_background", "images_evaluation")
    base = (Path(root) if root is not None else data_root()) / "omniglot"
    absent = [f"{p}.zip" for p in needed if not ((base / f"{p}.zip").exists() or (base / p).exists())]
    try:
        parts = [load_part(p, root, spec, download_missing, cache_dir) for p in needed]
    except FileNotFoundError as e:
        # name every file the split needs, not only the first one that failed
        raise FileNotFoundError(f"{e}. The {split!r} split needs {' and '.join(absent)} in {base}") from e
    base_names = sorted({n.rsplit("/", 1)[0] for n in names})
    which = {}
    for pi, part in enumerate(parts):
        for n in part.class_names:
            which[n] = pi
    missing = [n for n in base_names if n not in which]
    if missing:
        raise ValueError(f"Omniglot split {split!r}: {len(missing)} characters are not in the data, "
                         f"e.g. {missing[:3]}; are images_background and images_evaluation complete?")
    chosen = [[n for n in base_names if which[n] == pi] for pi in range(len(parts))]
    blocks = [part.subset(sel) for part, sel in zip(parts, chosen, strict=True) if sel]
    merged = ClassStore(
        torch.cat([b.images for b in blocks]),
        np.concatenate([[0], np.cumsum(np.concatenate([b.counts for b in blocks]))]),
        sum((b.class_names for b in blocks), []),
    )
    rotated = merged.with_rotations((0, 90, 180, 270))
    store = rotated.subset(names)
    store.meta = {"dataset": "omniglot", "name": f"omniglot/{split}", "split": split,
                  "image_spec": spec.to_dict(), "rotations": [0, 90, 180, 270]}
    return store
