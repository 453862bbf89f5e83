"""Lake validation protocol (issue 18): held-out background alphabets and runs built like Lake's."""

from __future__ import annotations

import random
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from metashot.data.lake_runs import validation_runs
from metashot.data.omniglot import LAKE_VAL_ALPHABETS, omniglot


def _characters(zip_path: Path) -> dict[str, set[str]]:
    chars: dict[str, set[str]] = defaultdict(set)
    for n in zipfile.ZipFile(zip_path).namelist():
        parts = n.split("/")
        if n.endswith(".png") and len(parts) == 4:
            chars[parts[1]].add(parts[2])
    return chars


def test_validation_alphabets_are_the_documented_draw(data_root: Path) -> None:
    om = data_root / "omniglot"
    background = _characters(om / "images_background.zip")
    minimal = set(_characters(om / "images_background_small1.zip")) | set(
        _characters(om / "images_background_small2.zip"))
    eligible = sorted(a for a, c in background.items() if len(c) >= 20 and a not in minimal)
    assert len(eligible) == 19
    assert tuple(sorted(random.Random(2015).sample(eligible, 5))) == LAKE_VAL_ALPHABETS


@pytest.mark.slow
def test_train_and_val_splits_partition_the_background_set(data_root: Path) -> None:
    train = omniglot("background_train", data_root)
    val = omniglot("background_val", data_root)
    full = omniglot("background", data_root)
    assert sorted(train.class_names + val.class_names) == sorted(full.class_names)
    assert {n.split("/")[0] for n in val.class_names} == set(LAKE_VAL_ALPHABETS)
    assert not {n.split("/")[0] for n in train.class_names} & set(LAKE_VAL_ALPHABETS)
    assert len(val.class_names) == 172 and len(train.class_names) == 792


def test_validation_runs_are_within_alphabet_and_deterministic(data_root: Path) -> None:
    runs = validation_runs(n_runs=10, seed=0, root=data_root)
    again = validation_runs(n_runs=10, seed=0, root=data_root)
    other = validation_runs(n_runs=10, seed=1, root=data_root)
    assert len(runs) == 10
    for i, r in enumerate(runs):
        assert r.ways == 20 and r.train_images.shape == (20, 105, 105)
        assert r.test_images.shape == (20, 105, 105) and sorted(r.answers.tolist()) == list(range(20))
        alphabets = {f.split("/")[2] for f in r.train_files}
        assert alphabets == {LAKE_VAL_ALPHABETS[i % 5]}  # one alphabet per run, in turn
        assert len(set(r.train_files)) == 20
        # a test image shows the same character as its answer's training image, drawn by someone else
        for k, j in enumerate(r.answers):
            assert not np.array_equal(r.test_images[k], r.train_images[j])
    assert all(np.array_equal(a.train_images, b.train_images) and np.array_equal(a.answers, b.answers)
               for a, b in zip(runs, again, strict=True))
    assert not all(np.array_equal(a.answers, b.answers) for a, b in zip(runs, other, strict=True))
