"""Image preprocessing shared by dataset stores and the fit/predict classifier.

One :class:`ImageSpec` describes how a raw image becomes the uint8 tensor a model was trained on, so the
practitioner's ``FewShotClassifier`` applies exactly the preprocessing of its checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

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
    """

    size: int = 28
    channels: int = 1
    invert: bool = False
    resize_filter: str = "box"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"ImageSpec.channels must be 1 or 3, got {self.channels}")
        if self.size < 1:
            raise ValueError(f"ImageSpec.size must be positive, got {self.size}")
        if self.resize_filter not in _FILTERS:
            raise ValueError(f"ImageSpec.resize_filter {self.resize_filter!r} is not one of "
                             f"{sorted(_FILTERS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageSpec:
        return cls(**d)


def to_pil(image: Any, source: str = "image") -> Image.Image:
    """Accept a PIL image, a file path, or a uint8 numpy array / torch tensor (HxW, HxWxC or CxHxW)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
        try:
            with Image.open(path) as im:
                im.load()
                return im.copy()
        except Exception as e:  # PIL raises several types for bad files
            raise ValueError(f"cannot decode image file {path}: {e}") from e
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        arr = image
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
                    f"uint8 array")


def preprocess(image: Any, spec: ImageSpec, source: str = "image") -> np.ndarray:
    """Return a uint8 array [C, H, W] for one raw image, following ``spec``."""
    im = to_pil(image, source)
    mode = "L" if spec.channels == 1 else "RGB"
    if im.mode in ("RGBA", "LA", "P") and mode == "RGB":
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    im = im.convert(mode)
    if im.size != (spec.size, spec.size):
        im = im.resize((spec.size, spec.size), _FILTERS[spec.resize_filter])
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
    if spec.invert:
        arr = 255 - arr
    return arr


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; float tensors pass through unchanged."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x
