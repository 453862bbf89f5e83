"""Flowers-102 (the 51 odd classes): splits disjoint by class, counts, preprocessing option, missing data."""

from __future__ import annotations

from pathlib import Path

import pytest

from metashot.data import ImageSpec, load_split


@pytest.mark.slow
def test_splits_are_disjoint_and_cover_the_51_classes(data_root: Path) -> None:
    val, test, every = (load_split("flowers102", s, image_size=16) for s in ("val", "test", "all"))
    assert (val.num_classes, test.num_classes, every.num_classes) == (26, 25, 51)
    assert set(val.class_names) | set(test.class_names) == set(every.class_names)
    assert not set(val.class_names) & set(test.class_names)
    assert all(int(n[:3]) % 4 == 1 for n in val.class_names)
    assert all(int(n[:3]) % 4 == 3 for n in test.class_names)
    assert len(every) == 4129 and len(val) + len(test) == 4129
    assert tuple(every.images.shape[1:]) == (3, 16, 16) and every.meta["name"] == "flowers102/all"


@pytest.mark.slow
def test_a_pretrained_models_preprocessing_is_applied(data_root: Path) -> None:
    spec = ImageSpec(size=20, channels=3, resize_filter="bicubic", crop_pct=0.875, mean=(0.5,) * 3,
                     std=(0.5,) * 3)
    store = load_split("flowers102", "test", image_spec=spec)
    assert tuple(store.images.shape[1:]) == (3, 20, 20) and store.meta["image_spec"] == spec.to_dict()


def test_missing_data_and_bad_split_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="flowers102_odd.zip"):
        load_split("flowers102", "all", root=tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load_split("flowers102", "train", root=tmp_path)
    with pytest.raises(ValueError, match="fixed preprocessing"):
        load_split("omniglot", "test", image_spec=ImageSpec())
