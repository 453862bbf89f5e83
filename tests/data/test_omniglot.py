"""Omniglot: Vinyals split, rotations per class, official sets, polarity and size, folder == zip."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metashot.data import omniglot as om
from metashot.data.store import ClassStore

NAME = re.compile(r"^[^/]+/character\d\d/rot(000|090|180|270)$")


def rotation_mismatches(store: ClassStore) -> int:
    """Number of images of classes ``X/rotDDD`` that are not torch.rot90(k=DDD/90) of the same image of
    ``X/rot000``. Zero iff every image of a rotated class carries exactly that class's rotation."""
    bad = 0
    for name in store.class_names:
        base, rot = name.rsplit("/", 1)
        if rot == "rot000":
            continue
        k = int(rot[3:]) // 90
        mine = store.class_images(store.index(name))
        ref = torch.rot90(store.class_images(store.index(f"{base}/rot000")), k=k, dims=(-2, -1))
        bad += int((mine != ref).flatten(1).any(1).sum())
    return bad


@pytest.mark.slow
def test_vinyals_split_sizes_and_names(omniglot_train: ClassStore, omniglot_test: ClassStore,
                                       data_root: Path) -> None:
    val = om.omniglot("val", data_root)
    sizes = {"train": omniglot_train.num_classes, "val": val.num_classes, "test": omniglot_test.num_classes}
    assert sizes == {"train": 4112, "val": 688, "test": 1692}
    chars = {}
    for split, store in (("train", omniglot_train), ("val", val), ("test", omniglot_test)):
        assert store.class_names == om.vinyals_split(split), "classes must follow the shipped split file"
        assert all(NAME.match(n) for n in store.class_names)
        assert (store.counts == 20).all(), "every character has 20 drawers"
        assert store.meta["split"] == split and store.meta["rotations"] == [0, 90, 180, 270]
        chars[split] = {n.rsplit("/", 1)[0] for n in store.class_names}
    assert [len(chars[s]) for s in ("train", "val", "test")] == [1028, 172, 423]
    assert not (chars["train"] & chars["val"]) and not (chars["train"] & chars["test"])
    assert not (chars["val"] & chars["test"])
    assert len(chars["train"] | chars["val"] | chars["test"]) == 964 + 659
    assert "Angelic/character01/rot090" in omniglot_train.class_names  # alphabet/character names are kept


@pytest.mark.slow
def test_rotation_is_per_class(omniglot_train: ClassStore) -> None:
    assert rotation_mismatches(omniglot_train) == 0
    # the rotations are not trivially equal to the upright images
    differs = [
        not torch.equal(omniglot_train.class_images(omniglot_train.index(f"{b}/rot090")),
                        omniglot_train.class_images(omniglot_train.index(f"{b}/rot000")))
        for b in ("Angelic/character01", "Korean/character10", "Futurama/character05")
    ]
    assert all(differs)


@pytest.mark.slow
def test_rotation_check_catches_per_image_rotation(omniglot_test: ClassStore) -> None:
    """The check above fails on a store where each image draws its own rotation (the bug it guards against).
    """
    sub = omniglot_test.subset(omniglot_test.class_names[:40])
    assert rotation_mismatches(sub) == 0
    gen = torch.Generator().manual_seed(0)
    upright = [i for i, n in enumerate(sub.class_names) if n.endswith("rot000")]
    images = sub.images.clone()
    for c in upright:  # rebuild the rotated classes with an independent random rotation per image
        base = sub.class_names[c].rsplit("/", 1)[0]
        for angle in (90, 180, 270):
            r = sub.index(f"{base}/rot{angle:03d}")
            for j in range(int(sub.counts[r])):
                k = int(torch.randint(0, 4, (1,), generator=gen))
                images[sub.offsets[r] + j] = torch.rot90(sub.images[sub.offsets[c] + j], k, dims=(-2, -1))
    broken = ClassStore(images, sub.offsets, sub.class_names)
    assert rotation_mismatches(broken) > 0


@pytest.mark.slow
def test_polarity_size_and_filter_are_documented_and_applied(omniglot_train: ClassStore,
                                                             data_root: Path) -> None:
    spec = om.OMNIGLOT_SPEC
    assert (spec.size, spec.channels, spec.invert, spec.resize_filter) == (28, 1, True, "box")
    doc = om.__doc__ or ""
    assert "28x28" in doc and "BOX" in doc and "dark (0) background" in doc
    imgs = omniglot_train.images
    assert imgs.dtype == torch.uint8 and tuple(imgs.shape[1:]) == (1, 28, 28)
    # background dark: the border is (almost) always 0, ink is bright
    border = torch.cat([imgs[..., 0, :], imgs[..., -1, :], imgs[..., :, 0], imgs[..., :, -1]], dim=-1).float()
    assert border.mean() < 5.0
    assert imgs.float().mean() < 64.0
    assert (imgs.flatten(1).amax(1) > 200).float().mean() > 0.99
    # and a raw file really is white background / black ink, resized with BOX: compare one image exactly
    with zipfile.ZipFile(data_root / "omniglot" / "images_background.zip") as zf:
        member = next(n for n in zf.namelist() if n.startswith("images_background/Korean/character10/")
                      and n.endswith(".png"))
        raw = Image.open(io.BytesIO(zf.read(member)))
        raw.load()
    assert raw.size == (105, 105)
    gray = np.asarray(raw.convert("L"))
    assert (gray == 255).mean() > 0.8, "the raw Omniglot PNG has a white background"
    expected = 255 - np.asarray(raw.convert("L").resize((28, 28), Image.Resampling.BOX))
    cls = omniglot_train.class_images(omniglot_train.index("Korean/character10/rot000"))
    assert (cls[:, 0].numpy() == expected).all(axis=(1, 2)).any()


@pytest.mark.parametrize(("split", "alphabets", "classes", "images"),
                         [("background_small1", 5, 136, 2720), ("background_small2", 5, 156, 3120)])
@pytest.mark.slow
def test_official_minimal_sets(data_root: Path, split: str, alphabets: int, classes: int,
                               images: int) -> None:
    s = om.omniglot(split, data_root)
    assert (s.num_classes, len(s)) == (classes, images)
    assert len({n.split("/")[0] for n in s.class_names}) == alphabets
    assert all(re.match(r"^[^/]+/character\d\d$", n) for n in s.class_names)
    assert s.meta["name"] == f"omniglot/{split}"
    assert "Latin/character01" in s.class_names


@pytest.mark.slow
def test_official_set_with_rotations_as_classes(data_root: Path) -> None:
    plain = om.omniglot("background_small1", data_root)
    rot = om.omniglot("background_small1", data_root, rotations=[0, 90, 180, 270])
    assert (rot.num_classes, len(rot)) == (4 * 136, 4 * 2720)
    assert rot.class_names[:4] == [f"Balinese/character01/rot{a:03d}" for a in (0, 90, 180, 270)]
    assert all(NAME.match(n) for n in rot.class_names)
    assert rotation_mismatches(rot) == 0
    first = plain.class_names[0]
    assert torch.equal(rot.class_images(rot.index(f"{first}/rot000")), plain.class_images(0))
    assert rot.meta["rotations"] == [0, 90, 180, 270] and rot.meta["name"] == "omniglot/background_small1"
    # a subset of angles, and the option through load_split (as a config's data.options passes it)
    from metashot.data import load_split
    two = load_split("omniglot", "background_small1", data_root, rotations=[0, 180])
    assert two.num_classes == 2 * 136 and two.class_names[1].endswith("/rot180")
    with pytest.raises(ValueError, match="multiple of 90"):
        om.omniglot("background_small1", data_root, rotations=[45])
    for same in ([0, 0], [0, 360]):
        with pytest.raises(ValueError, match="distinct angles"):
            om.omniglot("background_small1", data_root, rotations=same)
    with pytest.raises(ValueError, match="always holds the rotations"):
        om.omniglot("train", data_root, rotations=[0, 90])


@pytest.mark.slow
def test_extracted_folder_gives_identical_images(data_root: Path, tmp_path: Path) -> None:
    part = "images_background_small1"
    keep = ("Early_Aramaic", "Greek")
    with zipfile.ZipFile(data_root / "omniglot" / f"{part}.zip") as zf:
        members = [n for n in zf.namelist() if n.split("/")[1:2] and n.split("/")[1] in keep]
        zf.extractall(tmp_path / "omniglot", members=members)
    assert (tmp_path / "omniglot" / part / "Greek").is_dir()
    from_folder = om.load_part(part, tmp_path, download_missing=False, cache_dir=tmp_path / "cache")
    from_zip = om.omniglot("background_small1", data_root)
    expected = from_zip.subset([n for n in from_zip.class_names if n.split("/")[0] in keep])
    assert from_folder.class_names == expected.class_names
    assert from_folder.counts.tolist() == expected.counts.tolist()
    assert torch.equal(from_folder.images, expected.images)


def test_wrong_or_unstructured_files_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "omniglot"
    folder.mkdir()
    buf = io.BytesIO()
    Image.new("1", (105, 105), 1).save(buf, format="PNG")
    with zipfile.ZipFile(folder / "images_background.zip", "w") as zf:
        zf.writestr("pictures/a.png", buf.getvalue())  # not the official layout
    with pytest.raises(ValueError, match=r"images_background.zip holds no images in the official layout "
                                         r"images_background/<Alphabet>/<characterNN>"):
        om.omniglot("background", tmp_path, cache_dir=tmp_path / "cache")
    with zipfile.ZipFile(folder / "images_evaluation.zip", "w") as zf:
        zf.writestr("images_background/Latin/character01/0001_01.png", buf.getvalue())  # the wrong set
    with pytest.raises(ValueError, match=r"should hold images_evaluation/.* but holds "
                                         r"\['images_background'\]"):
        om.omniglot("evaluation", tmp_path, cache_dir=tmp_path / "cache")


def test_split_errors(data_root: Path) -> None:
    with pytest.raises(ValueError, match="unknown Vinyals split 'tran'"):
        om.omniglot("tran", data_root)
