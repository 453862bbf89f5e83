"""Lake et al.'s one-shot classification runs (``omniglot/all_runs.zip``).

Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic program induction",
Science 2015. The benchmark is 20 runs; each run is a 20-way *within-alphabet* one-shot task on the evaluation
alphabets: 20 training images (``runNN/training/class01.png`` ... ``class20.png``, one drawer each) and 20
test images (``runNN/test/item01.png`` ... ``item20.png``, another drawer), and ``runNN/class_labels.txt``
whose lines ``runNN/test/itemKK.png runNN/training/classJJ.png`` give the correct training image of each test
image. The error rate is the percentage of the 400 test images classified wrongly.

Images are the raw 105x105 1-bit PNGs, kept undecoded-to-model-space here (uint8 0/255, black ink on white)
so each model can apply its own checkpoint's preprocessing and training-free baselines can read the ink.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from metashot._env import data_root

ARCHIVE = "all_runs.zip"
LABELS = "class_labels.txt"
_RUN = re.compile(r"^(?:.*/)?(run\d+)/(class_labels\.txt|training/class\d+\.png|test/item\d+\.png)$")


@dataclass
class LakeRun:
    """One 20-way one-shot run.

    Attributes:
        name: e.g. ``run01``.
        train_files: sorted training image names (``run01/training/class01.png`` ...), length N.
        test_files: sorted test image names (``run01/test/item01.png`` ...), length M.
        train_images: uint8 [N, 105, 105], 0 = ink (black), 255 = background, in ``train_files`` order.
        test_images: uint8 [M, 105, 105], in ``test_files`` order.
        answers: int64 [M]; ``answers[i]`` is the index in ``train_files`` of test image i's class.
    """

    name: str
    train_files: list[str]
    test_files: list[str]
    train_images: np.ndarray
    test_images: np.ndarray
    answers: np.ndarray

    @property
    def ways(self) -> int:
        return len(self.train_files)


def locate_runs(root: str | Path | None = None) -> Path:
    """Path of ``<root>/omniglot/all_runs.zip`` or its extracted folder ``<root>/omniglot/all_runs/``."""
    base = (Path(root) if root is not None else data_root()) / "omniglot"
    for cand in (base / ARCHIVE, base / "all_runs"):
        if cand.exists():
            return cand
    raise FileNotFoundError(
        f"Lake's one-shot runs not found: place {ARCHIVE} (from github.com/brendenlake/omniglot, python/"
        f"one-shot-classification/) or its extracted folder all_runs/ in {base} (set METASHOT_DATA to change "
        f"the data root)"
    )


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except Exception as e:  # PIL raises several types for bad files
        raise ValueError(f"Lake runs: cannot decode {where}: {e}") from e


def _read_members(src: Path) -> dict[str, bytes]:
    """``runNN/...`` relative name -> file bytes, for every run file of the archive or folder."""
    out: dict[str, bytes] = {}
    if src.is_dir():
        for p in sorted(src.rglob("*")):
            if p.is_file():
                m = _RUN.match(p.relative_to(src).as_posix())
                if m:
                    out[f"{m.group(1)}/{m.group(2)}"] = p.read_bytes()
        return out
    try:
        with zipfile.ZipFile(src) as zf:
            for n in zf.namelist():
                m = _RUN.match(n)
                if m:
                    out[f"{m.group(1)}/{m.group(2)}"] = zf.read(n)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"Lake runs: {src} is not a readable zip file ({e}); replace it") from e
    return out


def load_lake_runs(root: str | Path | None = None, path: str | Path | None = None) -> list[LakeRun]:
    """Parse every run of Lake's archive (20 runs of 20 trials in the official file), sorted by run name.

    Args:
        root: data root (``$METASHOT_DATA`` when None); the archive is ``<root>/omniglot/all_runs.zip``.
        path: explicit archive or folder, overriding ``root``.

    Raises:
        FileNotFoundError: no archive. ValueError: a run misses its labels or images, or a label line names a
        file that is not in the run (the message names the run and the line).
    """
    src = Path(path) if path is not None else locate_runs(root)
    members = _read_members(src)
    names = sorted({k.split("/", 1)[0] for k in members})
    if not names:
        raise ValueError(f"Lake runs: {src} holds no runNN/ folders with {LABELS}, training/ and test/ "
                         "images")
    runs = []
    for run in names:
        label_key = f"{run}/{LABELS}"
        if label_key not in members:
            raise ValueError(f"Lake runs: {src}: {run} has no {LABELS}")
        pairs = []
        for ln, line in enumerate(members[label_key].decode().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"Lake runs: {src}: {label_key} line {ln} is {line!r}; "
                                 "expected 'test train'")
            pairs.append((parts[0], parts[1]))
        train_files = sorted(k for k in members if k.startswith(f"{run}/training/"))
        test_files = sorted(k for k in members if k.startswith(f"{run}/test/"))
        answer_of = dict(pairs)
        if sorted(answer_of) != test_files or len(answer_of) != len(pairs):
            raise ValueError(f"Lake runs: {src}: {label_key} lists {len(pairs)} test images but the run has "
                             f"{len(test_files)} ({test_files[:2]}...); the labels and images disagree")
        index = {f: i for i, f in enumerate(train_files)}
        missing = sorted({t for t in answer_of.values() if t not in index})
        if missing:
            raise ValueError(f"Lake runs: {src}: {label_key} names training images not in the run: "
                             f"{missing[:3]}")
        runs.append(LakeRun(
            name=run, train_files=train_files, test_files=test_files,
            train_images=np.stack([_decode(members[f], f"{src}:{f}") for f in train_files]),
            test_images=np.stack([_decode(members[f], f"{src}:{f}") for f in test_files]),
            answers=np.array([index[answer_of[f]] for f in test_files], dtype=np.int64),
        ))
    return runs


_DRAWER = re.compile(r"_(\d+)\.png$")


def validation_runs(n_runs: int = 50, seed: int = 0, root: str | Path | None = None,
                    ways: int = 20) -> list[LakeRun]:
    """Validation runs built like Lake's, from the held-out background alphabets alone (issue 18).

    Each run is a ``ways``-way within-alphabet one-shot task on one of
    :data:`metashot.data.omniglot.LAKE_VAL_ALPHABETS` (taken in turn, so 50 runs give 10 per alphabet):
    ``ways`` characters of that alphabet drawn at random, two different drawers drawn at random; the training
    image of each character is the first drawer's, its test image the second drawer's (as in Lake's runs,
    where a run's training and test images come from different people). The images are the raw 105x105 PNGs
    of ``images_background``, so every model applies its own preprocessing, as on the official runs. None of
    these alphabets is in ``background_train``, ``background_small1`` or ``background_small2``: no model
    trained on those sets has seen a character (nor, therefore, an image) of a validation run. Deterministic
    in ``(n_runs, seed, ways)``.
    """
    from metashot.data.omniglot import LAKE_VAL_ALPHABETS, _list_images, locate

    if n_runs < 1 or ways < 2:
        raise ValueError(f"validation_runs: need n_runs >= 1 and ways >= 2, got {n_runs} and {ways}")
    src = locate("images_background", Path(root) if root is not None else None, download_missing=False)
    by_char: dict[str, dict[str, dict[int, str]]] = {a: {} for a in LAKE_VAL_ALPHABETS}
    for alpha, char, member in _list_images(src, "images_background"):
        m = _DRAWER.search(member)
        if alpha in by_char and m:
            by_char[alpha].setdefault(char, {})[int(m.group(1))] = member
    for alpha, chars in by_char.items():
        if len(chars) < ways:
            raise ValueError(f"validation_runs: alphabet {alpha} has {len(chars)} characters in {src}; "
                             f"a {ways}-way run needs {ways}")
    rng = np.random.default_rng(seed)
    zf = zipfile.ZipFile(src) if src.is_file() else None

    def read(member: str) -> np.ndarray:
        data = zf.read(member) if zf is not None else Path(member).read_bytes()
        return _decode(data, f"{src}:{member}")

    runs = []
    try:
        for r in range(n_runs):
            alpha = LAKE_VAL_ALPHABETS[r % len(LAKE_VAL_ALPHABETS)]
            names = sorted(by_char[alpha])
            chars = [names[i] for i in rng.choice(len(names), ways, replace=False)]
            drawers = sorted(set.intersection(*(set(by_char[alpha][c]) for c in chars)))
            d_train, d_test = (drawers[i] for i in rng.choice(len(drawers), 2, replace=False))
            order = rng.permutation(ways)  # test item k shows character order[k]
            name = f"val{r + 1:02d}"
            runs.append(LakeRun(
                name=name,
                train_files=[f"{name}/training/{alpha}/{c}" for c in chars],
                test_files=[f"{name}/test/item{k + 1:02d}" for k in range(ways)],
                train_images=np.stack([read(by_char[alpha][c][d_train]) for c in chars]),
                test_images=np.stack([read(by_char[alpha][chars[j]][d_test]) for j in order]),
                answers=order.astype(np.int64),
            ))
    finally:
        if zf is not None:
            zf.close()
    return runs
