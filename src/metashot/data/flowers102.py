"""Oxford Flowers-102 (Nilsback & Zisserman 2008), the 51 odd-numbered classes: a photo domain outside
ImageNet.

Read from ``<root>/flowers102/`` as ``flowers102_odd.zip`` or the unpacked folder ``flowers102_odd/``, laid
out as ``flowers102_odd/<NNN_name>/<id>.jpg`` (NNN = 001, 003, ..., 101). No class is an ImageNet-1k class,
so it measures how a pretrained photo model transfers; metashot evaluates and selects on it and never trains
on it.

Splits (disjoint by class): ``val`` holds the classes numbered 1, 5, 9, ... (NNN = 1 mod 4, 26 classes),
``test`` those numbered 3, 7, 11, ... (25 classes), ``all`` the 51. Model choices are made on ``val`` (and
mini-ImageNet val), so ``test`` stays unseen by every choice.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from metashot._env import data_root, quiet
from metashot.data.preprocess import DECODER_VERSION, ImageSpec, preprocess
from metashot.data.store import ClassStore, cached_store

SPLITS = ("val", "test", "all")
NUM_CLASSES = 51


def locate(root: Path | None = None) -> Path:
    base = (Path(root) if root is not None else data_root()) / "flowers102"
    for cand in (base / "flowers102_odd", base / "flowers102_odd.zip"):
        if cand.exists():
            return cand
    raise FileNotFoundError(
        f"Flowers-102 not found: expected {base}/flowers102_odd.zip or the folder {base}/flowers102_odd/"
        f"<NNN_name>/<id>.jpg (the 51 odd-numbered classes of Oxford Flowers-102). Set METASHOT_DATA to the "
        f"data root that holds flowers102/"
    )


def _class_number(name: str) -> int:
    head = name.split("_", 1)[0]
    if not head.isdigit():
        raise ValueError(f"Flowers-102: class folder {name!r} does not start with its number (NNN_name)")
    return int(head)


def _listing(src: Path) -> dict[str, list[str]]:
    """Class folder name -> sorted member names (zip entries or file paths)."""
    out: dict[str, list[str]] = {}
    if src.is_file():
        try:
            with zipfile.ZipFile(src) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"Flowers-102: {src} is not a readable zip file ({e})") from e
        for n in names:
            parts = n.split("/")
            if len(parts) == 3 and parts[0] == "flowers102_odd" and parts[2].lower().endswith(".jpg"):
                out.setdefault(parts[1], []).append(n)
    else:
        for d in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
            out[d.name] = [str(f) for f in d.iterdir() if f.suffix.lower() == ".jpg"]
    if len(out) != NUM_CLASSES:
        raise ValueError(f"Flowers-102: {src} holds {len(out)} class folders, expected {NUM_CLASSES}")
    return {k: sorted(v) for k, v in sorted(out.items())}


def flowers102(split: str = "all", root: Path | None = None, image_size: int = 84,
               cache_dir: Path | None = None, spec: ImageSpec | None = None) -> ClassStore:
    """The classes of ``split`` (val / test / all) as a store of uint8 [M, 3, size, size] images.

    ``spec`` sets the preprocessing (default: squash to ``image_size`` with bilinear filtering).
    """
    if split not in SPLITS:
        raise ValueError(f"Flowers-102 split must be one of {SPLITS}, got {split!r}")
    if spec is None:
        spec = ImageSpec(size=image_size, channels=3, invert=False, resize_filter="bilinear")
    src = locate(root)
    sources = [src] if src.is_file() else [src, *sorted(p for p in src.iterdir() if p.is_dir())]

    def build() -> tuple[np.ndarray, list[int], list[str]]:
        listing = _listing(src)
        keep = {"all": (1, 3), "val": (1,), "test": (3,)}[split]
        names = [n for n in listing if _class_number(n) % 4 in keep]
        files = [(n, f) for n in names for f in listing[n]]
        out = np.empty((len(files), spec.channels, spec.size, spec.size), dtype=np.uint8)
        zf = zipfile.ZipFile(src) if src.is_file() else None
        try:
            bar = tqdm(files, desc=f"decode Flowers-102 {split}", unit="img", leave=False, disable=quiet())
            for i, (_, f) in enumerate(bar):
                where = f"{src}:{f}" if zf is not None else f
                try:
                    im = Image.open(io.BytesIO(zf.read(f))) if zf is not None else Image.open(f)
                    im.load()
                except Exception as e:
                    raise ValueError(f"Flowers-102: cannot decode {where}: {e}") from e
                out[i] = preprocess(im, spec, source=where)
        finally:
            if zf is not None:
                zf.close()
        return out, [len(listing[n]) for n in names], names

    meta = {"dataset": "flowers102", "split": split, "image_spec": spec.to_dict()}
    params = {"split": split, "spec": spec.to_dict(), "decoder": DECODER_VERSION}
    store = cached_store(f"flowers102-{split}-{spec.size}", sources, params, build, meta=meta,
                         cache_dir=cache_dir)
    store.meta.update(name=f"flowers102/{split}")
    return store
