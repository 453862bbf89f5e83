"""mini-ImageNet (Vinyals et al. 2016) in Ravi & Larochelle's layout: images/*.jpg + {train,val,test}.csv.

Read from ``<root>/mini_imagenet/`` as a folder (``mini_imagenet/images``, ``train.csv``...) or a zip holding
that layout (``mini_imagenet*.zip``). The standard split has 64 / 16 / 20 classes. There is no download:
ImageNet's licence requires users to obtain the images themselves. Images are 84x84 RGB
(``MINI_IMAGENET_SPEC``, bilinear resize when the source differs).
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from metashot._env import data_root, quiet
from metashot.data.preprocess import DECODER_VERSION, ImageSpec, preprocess
from metashot.data.store import ClassStore, cached_store

MINI_IMAGENET_SPEC = ImageSpec(size=84, channels=3, invert=False, resize_filter="bilinear")
SPLITS = ("train", "val", "test")


def locate(root: Path | None = None) -> Path:
    base = (Path(root) if root is not None else data_root()) / "mini_imagenet"
    if (base / "images").is_dir() and (base / "train.csv").is_file():
        return base
    if (base / "mini_imagenet" / "images").is_dir():
        return base / "mini_imagenet"
    zips = sorted(base.glob("mini_imagenet*.zip")) if base.is_dir() else []
    if zips:
        return zips[0]
    raise FileNotFoundError(
        f"mini-ImageNet not found in {base}. metashot cannot download it (ImageNet licence): obtain the "
        f"images and Ravi & Larochelle's train.csv/val.csv/test.csv, then place them as {base}/images/*.jpg "
        f"and {base}/{{train,val,test}}.csv, or a zip of that layout as {base}/mini_imagenet.zip"
    )


class _Source:
    """Uniform read access to the folder or the zip layout."""

    def __init__(self, src: Path) -> None:
        self.src = src
        self.zf: zipfile.ZipFile | None = None
        self.prefix = ""
        if src.is_file():
            try:
                self.zf = zipfile.ZipFile(src)
            except (zipfile.BadZipFile, OSError) as e:
                raise ValueError(f"mini-ImageNet: {src} is not a readable zip file ({e})") from e
            csvs = sorted((n for n in self.zf.namelist()
                           if n.rsplit("/", 1)[-1] == "train.csv" and not n.startswith("__MACOSX/")),
                          key=len)
            if not csvs:
                raise ValueError(f"mini-ImageNet: {src} has no train.csv; expected Ravi & Larochelle's "
                                 f"layout [<folder>/]images/*.jpg + train.csv, val.csv, test.csv")
            self.prefix = csvs[0][: -len("train.csv")]

    def read_csv(self, split: str) -> list[tuple[str, str]]:
        name = f"{split}.csv"
        try:
            if self.zf is not None:
                text = self.zf.read(self.prefix + name).decode()
            else:
                text = (self.src / name).read_text()
        except (KeyError, OSError) as e:
            raise FileNotFoundError(f"mini-ImageNet: {name} is missing from {self.src}") from e
        rows = list(csv.reader(io.StringIO(text)))
        if not rows or [c.strip() for c in rows[0][:2]] != ["filename", "label"]:
            raise ValueError(f"mini-ImageNet: {self.src}/{name} must start with the header 'filename,label'")
        out = []
        for line, r in enumerate(rows[1:], start=2):
            if not r:
                continue
            if len(r) < 2 or not r[0].strip() or not r[1].strip():
                raise ValueError(f"mini-ImageNet: {self.src}/{name} line {line} is {','.join(r)!r}; expected "
                                 f"'filename,label'")
            out.append((r[0].strip(), r[1].strip()))
        return out

    def open_image(self, filename: str) -> Image.Image:
        where = f"{self.src}:images/{filename}"
        try:
            if self.zf is not None:
                data = self.zf.read(self.prefix + "images/" + filename)
            else:
                data = (self.src / "images" / filename).read_bytes()
        except (KeyError, OSError) as e:
            raise FileNotFoundError(f"mini-ImageNet: image {where} listed in the csv is missing") from e
        try:
            im = Image.open(io.BytesIO(data))
            im.load()
            return im
        except Exception as e:
            raise ValueError(f"mini-ImageNet: cannot decode {where}: {e}") from e

    def close(self) -> None:
        if self.zf is not None:
            self.zf.close()


def mini_imagenet(split: str = "train", root: Path | None = None, image_size: int = 84,
                  cache_dir: Path | None = None, spec: ImageSpec | None = None) -> ClassStore:
    """Classes of ``split`` (train/val/test) as a store of uint8 [M, 3, size, size] images.

    ``spec`` replaces the default preprocessing (84x84 bilinear), e.g. with a pretrained model's.
    """
    if split not in SPLITS:
        raise ValueError(f"mini-ImageNet split must be one of {SPLITS}, got {split!r}")
    if spec is None:
        spec = ImageSpec(size=image_size, channels=3, invert=False, resize_filter="bilinear")
    src = locate(root)
    # A folder is keyed by its csv files and the images folder's own identity (which changes when files are
    # added, removed or renamed); stat-ing every image would cost more than the cached load itself.
    sources = [src] if src.is_file() else [p for p in [*(src / f"{s}.csv" for s in SPLITS), src / "images"]
                                            if p.exists()]

    def build() -> tuple[np.ndarray, list[int], list[str]]:
        s = _Source(src)
        try:
            rows = s.read_csv(split)
            by_class: dict[str, list[str]] = {}
            for fn, label in rows:
                by_class.setdefault(label, []).append(fn)
            if not by_class:
                raise ValueError(f"mini-ImageNet: {split}.csv in {src} lists no images")
            names = sorted(by_class)
            files = [f for n in names for f in by_class[n]]
            out = np.empty((len(files), 3, spec.size, spec.size), dtype=np.uint8)
            bar = tqdm(files, desc=f"decode mini-ImageNet {split}", unit="img", leave=False,
                       disable=quiet())
            for i, fn in enumerate(bar):
                out[i] = preprocess(s.open_image(fn), spec, source=fn)
            return out, [len(by_class[n]) for n in names], names
        finally:
            s.close()

    meta = {"dataset": "mini_imagenet", "split": split, "image_spec": spec.to_dict()}
    params = {"split": split, "spec": spec.to_dict()}
    if spec.crop_pct is not None:  # the photo pipeline's decoding rules (crop, EXIF, modes) are version 2
        params["decoder"] = DECODER_VERSION
    store = cached_store(f"mini_imagenet-{split}-{spec.size}", sources, params, build, meta=meta,
                         cache_dir=cache_dir)
    store.meta.update(name=f"mini_imagenet/{split}")
    return store
