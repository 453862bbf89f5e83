"""Raw photos of every kind through the preprocessor: alpha, palettes, 16-bit and float pixels, CMYK, EXIF
orientation, any size and aspect ratio, corrupt files, and the ImageSpec dictionary that checkpoints store.

The photo pipeline is a pretrained model's (bicubic, shorter side to size / crop_pct, centre crop); the
1-channel spec is the Omniglot kind (box filter, squashed to a square). Images are drawn with PIL / numpy.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metashot.data.preprocess import ImageSpec, preprocess, to_pil

PHOTO = ImageSpec(size=32, channels=3, resize_filter="bicubic", crop_pct=0.875)
GRAY = ImageSpec(size=32, channels=1)
SPECS = [pytest.param(PHOTO, id="photo"), pytest.param(GRAY, id="gray")]
OLD_KEYS = {"size", "channels", "invert", "resize_filter"}


def _ok(arr: np.ndarray, spec: ImageSpec) -> np.ndarray:
    assert arr.dtype == np.uint8 and arr.shape == (spec.channels, spec.size, spec.size)
    return arr


def _rgb_noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _on_white(rgba: Image.Image) -> Image.Image:
    """The reference: ``rgba`` composited on an opaque white sheet, as a viewer shows it."""
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


# ------------------------------------------------------------------------------------------------ alpha


@pytest.mark.parametrize("spec", SPECS)
def test_rgba_transparent_pixels_become_white(spec: ImageSpec, tmp_path: Path) -> None:
    a = np.zeros((30, 40, 4), np.uint8)  # fully transparent black, what most editors store
    assert (_ok(preprocess(Image.fromarray(a, "RGBA"), spec), spec) == 255).all()
    a[:, :20] = (200, 30, 10, 255)  # opaque left half
    a[:, 20:30] = (0, 0, 0, 128)  # half-transparent black: grey on paper
    im = Image.fromarray(a, "RGBA")
    im.save(tmp_path / "a.png")
    expected = preprocess(_on_white(im), spec)
    assert np.array_equal(_ok(preprocess(im, spec), spec), expected)
    assert np.array_equal(preprocess(tmp_path / "a.png", spec), expected), "a file gives the same pixels"
    # LA (grey + alpha) follows the same rule
    la = Image.fromarray(np.stack([np.zeros((30, 40), np.uint8)] * 2, -1), "LA")
    assert (preprocess(la, spec) == 255).all()


def test_rgba_on_a_one_channel_spec_is_composited_on_white_paper() -> None:
    """Decision: a transparent pixel is paper (white), for 1-channel specs too.

    Before ``_to_mode`` existed, RGBA went straight to L, which drops alpha: a drawing with a transparent
    background (stored as transparent *black*) became all ink, and after Omniglot's inversion all bright.
    Compositing on white makes the same drawing give what a viewer shows: black ink on white paper,
    identical to the opaque RGB drawing.
    """
    ink = np.zeros((40, 40, 4), np.uint8)
    ink[10:30, 18:22] = (0, 0, 0, 255)  # an opaque black stroke, the rest transparent black
    rgba = Image.fromarray(ink, "RGBA")
    opaque = np.full((40, 40), 255, np.uint8)
    opaque[10:30, 18:22] = 0
    omniglot_like = ImageSpec(size=28, channels=1, invert=True, resize_filter="box")
    got = preprocess(rgba, omniglot_like)
    assert np.array_equal(got, preprocess(Image.fromarray(opaque, "L"), omniglot_like))
    assert got[0, 0, 0] == 0 and got.max() == 255, "background dark, ink bright after the inversion"
    assert (preprocess(rgba, GRAY)[0, :, :5] == 255).all(), "transparent background is white"


# ---------------------------------------------------------------------------------------------- palettes


@pytest.mark.parametrize("spec", SPECS)
def test_palette_without_transparency(spec: ImageSpec, tmp_path: Path) -> None:
    p = _rgb_noise(45, 30).quantize(16)
    assert p.mode == "P" and "transparency" not in p.info
    expected = preprocess(p.convert("RGB"), spec)
    assert np.array_equal(_ok(preprocess(p, spec), spec), expected)
    p.save(tmp_path / "p.png")
    assert np.array_equal(preprocess(tmp_path / "p.png", spec), expected)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("fmt", ["png", "gif"])
def test_palette_with_transparency(spec: ImageSpec, fmt: str, tmp_path: Path) -> None:
    idx = np.zeros((30, 45), np.uint8)  # index 0: transparent (its colour, black, must not show)
    idx[:, 25:] = 1  # index 1: opaque blue
    p = Image.fromarray(idx, "P")
    p.putpalette([0, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    p.info["transparency"] = 0
    p.save(tmp_path / f"p.{fmt}", transparency=0)
    for src in (p, tmp_path / f"p.{fmt}"):
        got = _ok(preprocess(src, spec), spec)
        assert np.array_equal(got, preprocess(_on_white(p.convert("RGBA")), spec)), src
        assert (got[:, :, 0] == 255).all(), "the transparent left edge is white, not the palette's black"


# ------------------------------------------------------------------------------------- high bit depth


@pytest.mark.parametrize("spec", SPECS)
def test_16_bit_png_is_scaled_not_clipped(spec: ImageSpec, tmp_path: Path) -> None:
    a = np.full((30, 40), 32768, np.uint16)
    a[:, :10] = 0
    a[:, 30:] = 65535
    Image.fromarray(a).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16", "the file really is 16-bit"
    got = _ok(preprocess(tmp_path / "g16.png", spec), spec).astype(int)
    mid = got[:, :, spec.size // 2]
    assert np.abs(mid - 128).max() <= 1, f"mid-grey 32768 must map to ~128, got {np.unique(mid)}"
    flat = np.full((20, 20), 32768, np.uint16)
    assert (preprocess(Image.fromarray(flat), spec) == 128).all()
    assert (preprocess(Image.fromarray(np.full((9, 9), 65535, np.uint16)), spec) == 255).all()
    assert (preprocess(Image.fromarray(np.zeros((9, 9), np.uint16)), spec) == 0).all()


@pytest.mark.parametrize("spec", SPECS)
def test_32_bit_integer_mode_I(spec: ImageSpec) -> None:
    wide = Image.fromarray(np.full((20, 30), 32768, np.int32))
    assert wide.mode == "I"
    assert (_ok(preprocess(wide, spec), spec) == 128).all(), "values above 255: a 16-bit range"
    narrow = Image.fromarray(np.full((20, 30), 200, np.int32))
    assert (preprocess(narrow, spec) == 200).all(), "values within 0..255 are taken as they are"


@pytest.mark.parametrize("spec", SPECS)
def test_float_mode_F(spec: ImageSpec) -> None:
    unit = Image.fromarray(np.full((20, 30), 0.5, np.float32))
    assert unit.mode == "F"
    assert (_ok(preprocess(unit, spec), spec) == 128).all(), "values within 0..1: a unit range"
    byte = Image.fromarray(np.full((20, 30), 200.0, np.float32))
    assert (preprocess(byte, spec) == 200).all()
    holes = np.full((40, 40), 0.5, np.float32)
    holes[3, 3] = np.nan
    holes[5, 5] = np.inf
    got = preprocess(Image.fromarray(holes), spec)
    assert np.median(got) == 128, "one NaN / inf pixel must not blank the whole image"


# --------------------------------------------------------------------------------- other colour modes


def test_grayscale_into_a_3_channel_spec() -> None:
    g = np.random.default_rng(1).integers(0, 256, (48, 64), dtype=np.uint8)
    got = _ok(preprocess(Image.fromarray(g, "L"), PHOTO), PHOTO)
    assert np.array_equal(got[0], got[1]) and np.array_equal(got[1], got[2]), "grey stays grey"
    assert np.array_equal(got[:1], preprocess(Image.fromarray(g, "L"), ImageSpec(
        size=32, channels=1, resize_filter="bicubic", crop_pct=0.875)))


@pytest.mark.parametrize("spec", SPECS)
def test_cmyk_jpeg(spec: ImageSpec, tmp_path: Path) -> None:
    a = np.zeros((40, 60, 4), np.uint8)  # no ink: white paper
    a[:, 30:, 0] = 255  # pure cyan on the right half
    Image.fromarray(a, "CMYK").save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
        decoded = im.convert("RGB")
    got = _ok(preprocess(tmp_path / "c.jpg", spec), spec).astype(int)
    assert np.array_equal(got, preprocess(decoded, spec))
    if spec.channels == 3:
        assert (got[:, :, 0] >= 245).all(), "the white edge stays white"
        r, g, b = got[:, :, -1]
        assert r.max() <= 10 and g.min() >= 245 and b.min() >= 245, "cyan is (0, 255, 255)"
    else:
        assert (got[0, :, 0] >= 245).all() and (got[0, :, -1] < 200).all()


@pytest.mark.parametrize("mode", ["La", "PA", "RGBa", "RGBX", "YCbCr", "HSV", "LAB", "I;16B", "1"])
@pytest.mark.parametrize("spec", SPECS)
def test_every_other_pil_mode_converts(mode: str, spec: ImageSpec) -> None:
    im = _rgb_noise(37, 23)
    try:
        im = im.convert(mode)
    except ValueError:
        im = Image.new(mode, im.size)
    assert im.mode == mode
    _ok(preprocess(im, spec), spec)


# -------------------------------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation, to_upright", [(6, Image.Transpose.ROTATE_270),
                                                     (8, Image.Transpose.ROTATE_90)])
@pytest.mark.parametrize("spec", SPECS)
def test_exif_rotated_jpeg_is_upright(spec: ImageSpec, orientation: int, to_upright: Image.Transpose,
                                      tmp_path: Path) -> None:
    # An upright portrait scene (40 wide, 60 tall) whose corners differ, so any rotation shows.
    up = np.zeros((60, 40, 3), np.uint8)
    up[:, :, 2] = np.linspace(0, 255, 60, dtype=np.uint8)[:, None]  # blue grows downwards
    up[:20, :20] = (255, 0, 0)  # red top-left block
    up[45:, 25:, 1] = 255  # green at the bottom right
    upright = Image.fromarray(up)
    # the camera stores the sensor's landscape pixels and says how to turn them
    stored = upright.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    assert stored.transpose(to_upright).tobytes() == upright.tobytes()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    stored.save(path, quality=95, subsampling=0, exif=exif)  # 4:4:4: little colour bleeding

    got = _ok(preprocess(path, spec), spec)
    with Image.open(path) as raw:
        raw.load()
        assert raw.size == (60, 40) and raw.getexif()[0x0112] == orientation
        manual = preprocess(raw.transpose(to_upright), spec)
        unturned = preprocess(raw.copy(), spec)
    assert np.array_equal(got, manual), "the same decoded pixels, rotated as the tag says"
    diff = np.abs(got.astype(int) - preprocess(upright, spec).astype(int))
    assert diff.mean() < 4 and diff.max() < 60, "equals the upright scene within JPEG error"
    assert np.abs(got.astype(int) - unturned.astype(int)).mean() > 20, "the tag changed the result"


# --------------------------------------------------------------------------------- sizes and cropping


@pytest.mark.parametrize("wh", [(1, 1), (3000, 20), (20, 3000), (2, 7), (4000, 3000)],
                         ids=lambda wh: f"{wh[0]}x{wh[1]}")
@pytest.mark.parametrize("spec", SPECS)
def test_any_size(spec: ImageSpec, wh: tuple[int, int]) -> None:
    w, h = wh
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = (np.arange(w) * 7 % 256).astype(np.uint8)[None]
    a[..., 1] = (np.arange(h) * 3 % 256).astype(np.uint8)[:, None]
    _ok(preprocess(Image.fromarray(a), spec), spec)


def test_empty_image_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        preprocess(Image.new("RGB", (0, 5)), PHOTO)


def _disk(w: int, h: int, r: float) -> Image.Image:
    y, x = np.mgrid[:h, :w]
    a = np.where((x - (w - 1) / 2) ** 2 + (y - (h - 1) / 2) ** 2 <= r * r, 255, 0).astype(np.uint8)
    return Image.fromarray(a, "L")


def _extent(mask: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("wh", [(200, 100), (100, 200)])
def test_crop_pct_keeps_aspect_ratio_and_shows_the_centre(wh: tuple[int, int]) -> None:
    w, h = wh
    # a red disk in the middle of a wide (or tall) black picture, whose outer borders are blue
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.asarray(_disk(w, h, 40))
    side = (w - h) // 2 if w > h else (h - w) // 2
    border = (slice(None), slice(0, side // 2)) if w > h else (slice(0, side // 2), slice(None))
    a[border] = (0, 0, 255)
    got = _ok(preprocess(Image.fromarray(a), PHOTO), PHOTO)
    tall, wide = _extent(got[0] > 128)
    assert abs(tall - wide) <= 1, f"the disk stays round: {tall}x{wide}"
    assert got[2].max() < 30, "only the centre is shown; the blue border is cropped away"
    # squashing (no crop_pct) makes the disk an ellipse and keeps the borders
    squashed = preprocess(Image.fromarray(a), ImageSpec(size=32, channels=3, resize_filter="bicubic"))
    tall, wide = _extent(squashed[0] > 128)
    assert (tall > 1.6 * wide) if w > h else (wide > 1.6 * tall)
    assert squashed[2].max() > 200


def test_crop_matches_timm_evaluation_transform_pixel_for_pixel() -> None:
    """timm's eval transform for crop_pct: torchvision's Resize(floor(size / crop_pct)), CenterCrop(size)."""
    tv = pytest.importorskip("torchvision.transforms")
    modes = {"bicubic": tv.InterpolationMode.BICUBIC, "bilinear": tv.InterpolationMode.BILINEAR}
    for size, crop, filt in [(32, 0.875, "bicubic"), (224, 0.9, "bicubic"), (30, 0.7, "bilinear"),
                             (84, 1.0, "bilinear")]:
        spec = ImageSpec(size=size, channels=3, resize_filter=filt, crop_pct=crop)
        ref = tv.Compose([tv.Resize(math.floor(size / crop), interpolation=modes[filt]), tv.CenterCrop(size)])
        for i, wh in enumerate([(101, 57), (57, 101), (300, 2), (1, 1), (333, 500), (38, 37)]):
            im = _rgb_noise(*wh, seed=i)
            expected = np.asarray(ref(im)).transpose(2, 0, 1)
            assert np.array_equal(preprocess(im, spec), expected), (size, crop, wh)


@pytest.mark.parametrize("mode", ["1", "L", "RGB"])
def test_plain_modes_are_pil_convert_and_resize_as_before(mode: str) -> None:
    """The bundled Omniglot models' pinned figures rest on these three modes' exact pixels."""
    base = _rgb_noise(105, 90, seed=3)
    im = base.convert(mode)
    for spec in (ImageSpec(size=28, channels=1, invert=True, resize_filter="box"), GRAY,
                 ImageSpec(size=84, channels=3, resize_filter="bilinear")):
        resample = getattr(Image.Resampling, spec.resize_filter.upper())
        expected = np.asarray(im.convert("L" if spec.channels == 1 else "RGB")
                              .resize((spec.size, spec.size), resample))
        expected = expected[None] if expected.ndim == 2 else expected.transpose(2, 0, 1)
        if spec.invert:
            expected = 255 - expected
        assert np.array_equal(preprocess(im, spec), expected), (mode, spec)


# ---------------------------------------------------------------------------------------- bad files


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    _rgb_noise(64, 64).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("name, content", [
    ("truncated.jpg", lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2]),
    ("noise.png", lambda: np.random.default_rng(5).bytes(3000)),
])
@pytest.mark.parametrize("spec", SPECS)
def test_corrupt_file_raises_value_error_naming_it(spec: ImageSpec, name: str, content,
                                                   tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(content())
    with pytest.raises(ValueError, match=re.escape(str(path))):
        preprocess(path, spec)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        preprocess(str(path), spec, source="support[3]")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        to_pil(path)


# ------------------------------------------------------------------------------------ ImageSpec as dict


def test_spec_dict_without_new_keys_is_the_old_dict() -> None:
    for spec in (ImageSpec(), GRAY, ImageSpec(size=84, channels=3, resize_filter="bilinear")):
        d = spec.to_dict()
        assert set(d) == OLD_KEYS, "checkpoints (and their digests) of older specs must not change"
        assert ImageSpec.from_dict(d) == spec
        assert ImageSpec.from_dict(json.loads(json.dumps(d))) == spec
    # the bundled Omniglot checkpoint's stored spec is what the Omniglot spec still writes
    config = resources.files("metashot").joinpath("weights/protonet-omniglot/config.json")
    meta = json.loads(config.read_text())
    assert ImageSpec(size=28, channels=1, invert=True, resize_filter="box").to_dict() == meta["image_spec"]
    assert ImageSpec.from_dict(meta["image_spec"]).crop_pct is None


def test_spec_dict_round_trip_with_new_keys() -> None:
    spec = ImageSpec(size=224, channels=3, resize_filter="bicubic", crop_pct=0.875,
                     mean=(0.485, 0.456, 0.406), std=[0.229, 0.224, 0.225])
    d = spec.to_dict()
    assert set(d) == OLD_KEYS | {"crop_pct", "mean", "std"}
    assert d["mean"] == [0.485, 0.456, 0.406] and isinstance(d["std"], list)
    back = ImageSpec.from_dict(json.loads(json.dumps(d)))
    assert back == spec and hash(back) == hash(spec) and back.std == (0.229, 0.224, 0.225)
    only_crop = ImageSpec(size=32, channels=3, crop_pct=1)
    assert only_crop.to_dict() == {"size": 32, "channels": 3, "invert": False, "resize_filter": "box",
                                   "crop_pct": 1.0}
    assert ImageSpec.from_dict(only_crop.to_dict()) == only_crop


@pytest.mark.parametrize("kwargs, message", [
    ({"crop_pct": 0}, "crop_pct"), ({"crop_pct": 1.5}, "crop_pct"), ({"crop_pct": float("nan")}, "crop_pct"),
    ({"crop_pct": True}, "crop_pct"), ({"crop_pct": "0.9"}, "crop_pct"),
    ({"mean": (0.5, 0.5)}, "mean has 2 values for 3"), ({"std": (0.2, 0.0, 0.2)}, "std must be positive"),
    ({"mean": 0.5}, "mean must be a sequence"), ({"std": (0.2, float("nan"), 0.2)}, "finite"),
])
def test_bad_spec_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageSpec(size=32, channels=3, **kwargs)


def test_unknown_spec_key_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        ImageSpec.from_dict({"size": 28, "channels": 1, "invert": True, "resize_filter": "box", "crop": 0.9})


@pytest.mark.parametrize("wh", [(1, 20000), (60000, 1)], ids=["1x20000", "60000x1"])
def test_an_extreme_aspect_ratio_is_resized_within_bounded_memory(wh: tuple[int, int], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A 161-byte 1x20000 PNG became 256 x 5.1M pixels (3.6 GB) before its centre crop (issue 27 item 7):
    no image PIL is asked to make may exceed 2**25 pixels, and the crop still shows the strip's centre."""
    resize = Image.Image.resize

    def bounded(self: Image.Image, size: tuple[int, int], *args, **kwargs) -> Image.Image:
        if size[0] * size[1] > 1 << 25:
            raise MemoryError(f"asked PIL for a {size[0]}x{size[1]} image")
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", bounded)
    a = np.full(wh[::-1], 40, np.uint8)
    a.reshape(-1)[a.size // 2 - 5 : a.size // 2 + 5] = 250  # the crop magnifies < 1 pixel of the strip
    path = tmp_path / "strip.png"
    Image.fromarray(a).save(path)
    spec = ImageSpec(size=224, channels=3, resize_filter="bicubic", crop_pct=0.875)
    got = _ok(preprocess(path, spec), spec)
    assert got.min() > 200, "the crop shows the strip's centre"


def test_above_the_resize_bound_the_crop_stays_close_to_the_full_resize(monkeypatch: pytest.MonkeyPatch
                                                                        ) -> None:
    pre = importlib.import_module("metashot.data.preprocess")

    y = np.linspace(0, 1, 3000)[:, None]
    a = (255 * (0.5 + 0.5 * np.sin(12 * y)) * np.ones((1, 20))).astype(np.uint8)
    im = Image.fromarray(np.stack([a, a[::-1], a], -1))
    full = preprocess(im, PHOTO).astype(int)
    monkeypatch.setattr(pre, "FULL_RESIZE_PIXELS", 1000)
    boxed = preprocess(im, PHOTO).astype(int)
    assert np.abs(full - boxed).max() <= 2
