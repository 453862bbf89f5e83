"""Image preprocessing shared by dataset stores and the fit/predict classifier.

One :class:`ImageSpec` describes how a raw image becomes the uint8 tensor a model was trained on, so the
practitioner's ``FewShotClassifier`` applies exactly the preprocessing of its checkpoint.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

# Version of the decoding rules for users' photos (EXIF orientation, every PIL mode, timm's resize, crop);
# caches of photo stores are keyed by it, so a change here never reuses pixels decoded by older rules.
# Omniglot and the default mini-ImageNet pipeline decode exactly as before and keep their caches.
DECODER_VERSION = 2

_FILTERS = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class ImageSpec:
    """How raw images are turned into model inputs.

    Attributes:
        size: output height and width in pixels (square).
        channels: 1 (grayscale, PIL mode "L") or 3 (RGB).
        invert: if True, 255 - value after conversion. Omniglot uses it so that ink is bright (255) on a
            dark (0) background, the polarity the published models were trained with.
        resize_filter: one of box, bilinear, bicubic, lanczos, nearest. ``box`` averages the source
            pixels under each output pixel (area interpolation), which keeps thin Omniglot strokes.
        crop_pct: None (default) squashes the whole image to ``size`` x ``size``. A number in (0, 1] keeps
            the aspect ratio instead: the shorter side is resized to ``size / crop_pct`` and the centre
            ``size`` x ``size`` is cut out, as timm's evaluation transform does for pretrained models.
        mean, std: per-channel normalisation (in [0, 1] units) that the model applies to its inputs, recorded
            so that a checkpoint documents its whole input pipeline; the pixels stored here stay uint8.
    """

    size: int = 28
    channels: int = 1
    invert: bool = False
    resize_filter: str = "box"
    crop_pct: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"ImageSpec.channels must be 1 or 3, got {self.channels}")
        if self.size < 1:
            raise ValueError(f"ImageSpec.size must be positive, got {self.size}")
        if self.resize_filter not in _FILTERS:
            raise ValueError(f"ImageSpec.resize_filter {self.resize_filter!r} is not one of "
                             f"{sorted(_FILTERS)}")
        if self.crop_pct is not None:
            c = self.crop_pct
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1:
                raise ValueError(f"ImageSpec.crop_pct must be a number in (0, 1] or None, got {c!r}")
            object.__setattr__(self, "crop_pct", float(self.crop_pct))
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                try:
                    v = tuple(float(x) for x in v)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"ImageSpec.{name} must be a sequence of {self.channels} number(s), "
                                     f"got {v!r}") from e
                object.__setattr__(self, name, v)
                if len(v) != self.channels:
                    raise ValueError(f"ImageSpec.{name} has {len(v)} values for {self.channels} channel(s)")
                if not all(math.isfinite(x) for x in v):
                    raise ValueError(f"ImageSpec.{name} must be finite, got {v}")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"ImageSpec.std must be positive, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # Older checkpoints have no crop/normalisation keys; writing them only when set keeps those files
        # (and their digests) unchanged.
        for k in ("crop_pct", "mean", "std"):
            if d[k] is None:
                del d[k]
            elif k != "crop_pct":
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageSpec:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"ImageSpec: unknown keys {sorted(unknown)} in {d}")
        return cls(**d)


def _register_heif() -> bool:
    """Let PIL open HEIC / HEIF photos (the iPhone default) through pillow-heif, when it is installed (the
    ``vision`` extra); AVIF is read by Pillow itself where it was built with libavif."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


HEIF = _register_heif()
HEIF_SUFFIXES = (".heic", ".heif")


def decode_hint(path: Path) -> str:
    """What to do about an undecodable file beyond replacing it: install pillow-heif for a HEIC photo."""
    if path.suffix.lower() in HEIF_SUFFIXES and not HEIF:
        return "; HEIC/HEIF photos need pillow-heif: pip install 'metashot[vision]'"
    return ""


def to_pil(image: Any, source: str = "image", min_side: int | None = None) -> Image.Image:
    """Accept a PIL image, a file path, or a uint8 numpy array / torch tensor (HxW, HxWxC or CxHxW).

    Bool arrays (what ``np.array`` gives for a 1-bit PNG such as Omniglot's) are read as True = 255 (white).

    ``min_side``: a JPEG file is decoded at the smallest 1/2, 1/4 or 1/8 scale whose sides stay >= it
    (libjpeg's DCT scaling): a 12-megapixel phone photo headed for a 224-pixel model decodes several times
    faster.
    """
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
        try:
            with Image.open(path) as im:
                if min_side and im.format == "JPEG":
                    im.draft(im.mode, (min_side, min_side))
                im.load()
                # Cameras store the sensor's pixels plus an EXIF orientation tag; apply it so a portrait
                # photo is upright, as every photo viewer shows it.
                return _exif_upright(im, path)
        except Exception as e:  # PIL raises several types for bad files
            raise ValueError(f"cannot decode image file {path}: {e}{decode_hint(path)}") from e
    torch = sys.modules.get("torch")  # (a tensor exists only once torch is imported: never import it here)
    if torch is not None and isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype == np.bool_:  # np.array(Image.open(png)) of a 1-bit PNG (Omniglot's): True is white
            arr = arr.astype(np.uint8) * 255
        if arr.dtype != np.uint8:
            raise ValueError(f"{source}: array images must be uint8 (0..255), got dtype {arr.dtype}")
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = np.transpose(arr, (1, 2, 0))  # CxHxW -> HxWxC
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3):
            raise ValueError(f"{source}: array image must be HxW, HxWxC or CxHxW, got shape {arr.shape}")
        return Image.fromarray(arr)
    raise TypeError(f"{source}: unsupported image type {type(image).__name__}; use a PIL image, path or "
                    f"uint8 (or bool) array")


def _exif_upright(im: Image.Image, path: Path) -> Image.Image:
    """``im`` turned upright by its EXIF orientation tag (a copy either way)."""
    try:
        return ImageOps.exif_transpose(im) or im.copy()
    except Exception as e:  # malformed metadata must not make a decodable photo unusable
        warnings.warn(f"image file {path}: cannot apply its EXIF orientation ({e}); using the pixels as "
                      f"stored", stacklevel=3)
        return im.copy()


# Input checks of users' images (preprocess_checked): a pixel is "colourful" when its largest and smallest
# channel differ by more than _CHROMA; an image is a colour photo when more than _COLOUR_FRACTION of its
# pixels are. Pen strokes in blue ink on white paper stay far below that fraction.
_CHROMA = 48
_COLOUR_FRACTION = 0.2
# The largest image (in pixels) that _resize_centre_crop makes before cutting its centre: about 50 MB in RGB.
FULL_RESIZE_PIXELS = 1 << 24
LIGHT_ON_DARK = "light ink on a dark background"
COLOUR = "colour photo"


def preprocess(image: Any, spec: ImageSpec, source: str = "image") -> np.ndarray:
    """Return a uint8 array [C, H, W] for one raw image, following ``spec``."""
    return _preprocess(image, spec, source, check=False)[0]


def preprocess_checked(image: Any, spec: ImageSpec, source: str = "image") -> tuple[np.ndarray, set[str]]:
    """``preprocess`` for users' images: also notes inputs that do not look like the checkpoint's domain.

    Returns (uint8 [C, H, W], notes); notes may hold:

    - ``LIGHT_ON_DARK``: for a spec with ``invert`` and 1 channel (drawings, dark ink on white paper, which
      the model sees inverted), an image whose median grey level is below 128, i.e. most pixels are dark: the
      drawing is already inverted (white ink on black). It is used as it is, not inverted a second time, so
      the model sees bright ink on a dark background either way.
    - ``COLOUR``: for a 1-channel spec, an image with many strongly coloured pixels (a colour photo given to
      a grayscale model); it is processed as usual, the caller warns.
    """
    return _preprocess(image, spec, source, check=True)


def domain_warning(spec: ImageSpec, hits: dict[str, list[str]], counts: dict[str, int], total: int,
                   what: str) -> str | None:
    """The one warning for a set of ``total`` inputs of which ``counts[note]`` got each note of
    :func:`preprocess_checked` (``hits[note]``: a few of their names), or None when none did. The same words
    for every caller: ``predict``, the Python API and image folders (``eval --dataset folder``)."""
    says = {
        COLOUR: (f"look like colour photos, but this model takes {spec.size}x{spec.size} grayscale images"
                 f"{' of drawings' if spec.invert else ''}; its predictions for them are unreliable"),
        LIGHT_ON_DARK: ("are light ink on a dark background (already inverted); this model expects dark ink "
                        "on white paper, so they were used as they are, not inverted again"),
    }
    lines = [f"{counts[note]} of {total} {what} {text} (e.g. {', '.join(hits[note][:5])})"
             for note, text in says.items() if counts.get(note)]
    return "; ".join(lines) if lines else None


def _preprocess(image: Any, spec: ImageSpec, source: str, check: bool) -> tuple[np.ndarray, set[str]]:
    notes: set[str] = set()
    if source == "image" and isinstance(image, (str, Path)):
        source = str(image)
    # Reduced JPEG decoding only for the photo pipeline (crop_pct set), so older checkpoints see the same
    # pixels.
    min_side = math.ceil(spec.size / spec.crop_pct) if spec.crop_pct else None
    im = to_pil(image, source, min_side)
    if im.width < 1 or im.height < 1:
        raise ValueError(f"{source}: the image is empty ({im.width}x{im.height} pixels)")
    mode = "L" if spec.channels == 1 else "RGB"
    if check and spec.channels == 1 and im.mode not in ("1", "L", "LA", "La", "I", "F") \
            and not im.mode.startswith("I;16") and _is_colour_photo(im):
        notes.add(COLOUR)
    try:
        im = _to_mode(im, mode)
    except ValueError as e:
        raise ValueError(f"{source}: cannot convert a PIL {im.mode} image to {mode}: {e}") from e
    invert = spec.invert
    if check and invert and mode == "L" and COLOUR not in notes and _median_grey(im) < 128:
        notes.add(LIGHT_ON_DARK)
        invert = False
    if spec.crop_pct is not None:
        im = _resize_centre_crop(im, spec.size, spec.crop_pct, _FILTERS[spec.resize_filter])
    elif im.size != (spec.size, spec.size):
        im = im.resize((spec.size, spec.size), _FILTERS[spec.resize_filter])
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
    if invert:
        arr = 255 - arr
    return arr, notes


def _median_grey(im: Image.Image) -> float:
    """Median grey level of an L image (of a <= 256-pixel copy of a larger one, which is as telling)."""
    if max(im.size) > 256:
        im = im.copy()
        im.thumbnail((256, 256))
    return float(np.median(np.asarray(im)))


def _is_colour_photo(im: Image.Image) -> bool:
    """True when over _COLOUR_FRACTION of the pixels of ``im`` (on white, at <= 64 px) are colourful."""
    small = im.copy()
    small.thumbnail((64, 64))
    try:
        rgb = np.asarray(_to_mode(small, "RGB"), dtype=np.int16)
    except ValueError:
        return False
    chroma = rgb.max(-1) - rgb.min(-1)
    return bool((chroma > _CHROMA).mean() > _COLOUR_FRACTION)


def _light_on_transparency(rgba: Image.Image) -> bool:
    """True when the visible pixels of ``rgba`` (weighted by their alpha) are light on average: light ink on
    a transparent background, which would vanish on white paper and is composited onto black instead."""
    a = np.asarray(rgba, dtype=np.float64)
    alpha = a[..., 3] / 255.0
    if alpha.sum() == 0 or alpha.min() == 1.0:  # nothing visible, or nothing transparent
        return False
    grey = a[..., :3] @ np.array([0.299, 0.587, 0.114])
    return bool((grey * alpha).sum() / alpha.sum() > 127.5)


def _to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL mode (RGBA, LA, P with transparency, CMYK, 16-bit I;16, 32-bit I and F) to L or RGB.

    Transparent pixels are composited onto white, as a viewer shows them (paper, for drawings), unless the
    visible pixels are light (white ink on transparency): then onto black, so the ink is kept.
    High-bit-depth images are scaled by the range of their kind, where PIL's plain convert would clip a
    16-bit image to white: I;16 by 0..65535; I by 0..255 when its values fit, else 0..65535 (or its
    maximum); F by 0..1 when its values fit, else 0..255 (or its maximum). NaN pixels are black.
    "1", "L" and "RGB" get PIL's plain convert, as before these rules (the bundled Omniglot models' pinned
    figures depend on it).
    """
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        finite = np.isfinite(a)
        peak = float(a[finite].max()) if finite.any() else 0.0
        if im.mode.startswith("I;16") or (im.mode == "I" and 255 < peak <= 65535):
            top = 65535.0
        elif im.mode == "F" and peak <= 1.0:
            top = 1.0
        else:
            top = max(peak, 255.0)
        # NaN (no data) is black; +-inf clip to white/black instead of spoiling the scale of the whole image.
        a = np.nan_to_num(a, nan=0.0, posinf=top, neginf=0.0)
        im = Image.fromarray(np.clip(np.rint(a / top * 255.0), 0, 255).astype(np.uint8), "L")
    if im.mode == "La":  # premultiplied: PIL converts it to LA only
        im = im.convert("LA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = im.convert("RGBA")
        shade = 0 if _light_on_transparency(rgba) else 255  # the ink must stay visible on the background
        bg = Image.new("RGBA", rgba.size, (shade, shade, shade, 255))
        im = Image.alpha_composite(bg, rgba).convert("RGB")
    if im.mode == mode:
        return im
    try:
        return im.convert(mode)
    except ValueError:  # e.g. LAB, which PIL converts to RGB only
        return im.convert("RGB").convert(mode)


def _resize_centre_crop(im: Image.Image, size: int, crop_pct: float,
                        resample: Image.Resampling) -> Image.Image:
    """Resize the shorter side to floor(size / crop_pct), keeping the aspect ratio; cut the centre square.

    Pixel for pixel what timm's evaluation transform does (``Resize(floor(size / crop_pct))`` then
    ``CenterCrop(size)`` of torchvision): the longer side is truncated, the crop offset rounded half to even.
    Beyond :data:`FULL_RESIZE_PIXELS` resized pixels (an extreme aspect ratio: a 1x20000 strip would become
    256 x 5.1M pixels, 3.6 GB) only the source region under the crop is resized (PIL's ``box``, the same
    filter), so memory stays bounded by the crop; its pixels may then differ slightly from the full resize.
    """
    short = math.floor(size / crop_pct)
    w, h = im.size
    if w <= h:
        new_w, new_h = short, int(short * h / w)
    else:
        new_w, new_h = int(short * w / h), short
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    if new_w * new_h > FULL_RESIZE_PIXELS:
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return im.resize((size, size), resample, box=box)
    if (new_w, new_h) != im.size:
        im = im.resize((new_w, new_h), resample)
    return im.crop((left, top, left + size, top + size))


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; float tensors pass through unchanged."""
    import torch

    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x
