"""Datasets, the class store and episodes.

``load_split(data_config, split)`` returns the :class:`ClassStore` of one split for any registered dataset;
``register_dataset`` adds a new one without touching the rest of the library.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metashot.data.preprocess import ImageSpec, preprocess
from metashot.registry import Registry

if TYPE_CHECKING:
    from metashot.data.episodes import EpisodeBatch, EpisodeSampler
    from metashot.data.store import ClassStore

# The names that need torch are imported on first use (PEP 562), so that reading photos
# (metashot.data.preprocess, which the torch-free metashot.lite uses) does not import torch.
_LAZY = {"EpisodeBatch": "metashot.data.episodes", "EpisodeSampler": "metashot.data.episodes",
         "ClassStore": "metashot.data.store"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# A dataset is registered with what shared code needs to know of it: its ``modality`` ("image" or "text":
# text checkpoints take sentences), ``image_spec`` (None: fixed preprocessing; "pretrained": a photo dataset
# that takes a pretrained model's input pipeline; "always": a user's folder, read with the checkpoint's own
# preprocessing), ``test_episodes`` (its paper's standard number of test episodes, None: the config's),
# ``split_classes`` (``(split, root) -> number of classes`` without decoding an image, or None) and
# ``ways_from_split`` (evaluation defaults to every class of the split, as for a user's folder).
DATASETS: Registry[Callable[..., ClassStore]] = Registry(
    "dataset", defaults={"modality": "image", "image_spec": None, "test_episodes": None,
                         "split_classes": None, "ways_from_split": False})


def _omniglot_classes(split: str, root: str | Path | None) -> int:
    from metashot.data.omniglot import vinyals_split

    return len(vinyals_split(split))


def folder_classes(split: str, root: str | Path | None) -> int:
    """The class subfolders of folder ``split`` (absolute, or relative to ``root``)."""
    path = Path(split)
    path = Path(root) / path if root and not path.is_absolute() else path
    return sum(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())


Loader = Callable[..., "ClassStore"]


def register_dataset(name: str, **meta: Any) -> Callable[[Loader], Loader]:
    """Decorator: ``fn(split, root, image_size, **options) -> ClassStore`` loads dataset ``name``; ``meta`` as
    in :data:`DATASETS` (a name taken by another loader is an error)."""
    return DATASETS.register(name, **meta)


def available_datasets() -> list[str]:
    return DATASETS.names()


def load_split(dataset: str, split: str, root: str | Path | None = None, image_size: int | None = None,
               image_spec: ImageSpec | dict[str, Any] | None = None, **options: Any) -> ClassStore:
    """The store of ``split`` of ``dataset`` (e.g. ``load_split("omniglot", "test")``).

    ``image_spec`` replaces a photo dataset's default preprocessing (mini_imagenet, flowers102, folder), e.g.
    with a pretrained model's (``TimmBackbone.image_spec``, or the ``image_spec`` a checkpoint records).
    """
    entry = DATASETS.entry(dataset)
    if image_spec is not None:
        if entry.image_spec is None:
            takes = [e.name for e in DATASETS.entries() if e.image_spec is not None]
            raise ValueError(f"dataset {dataset!r} has a fixed preprocessing; image_spec applies to {takes}")
        options["spec"] = ImageSpec.from_dict(image_spec) if isinstance(image_spec, dict) else image_spec
    return entry.obj(split=split, root=Path(root) if root else None, image_size=image_size, **options)


# (1000 test episodes: the ProtoNet paper's Omniglot protocol)
@register_dataset("omniglot", test_episodes=1000, split_classes=_omniglot_classes)
def _omniglot(split: str, root: Path | None, image_size: int | None, **options: Any) -> ClassStore:
    from metashot.data.omniglot import omniglot

    return omniglot(split, root, image_size or 28, **options)


@register_dataset("mini_imagenet", image_spec="pretrained")
def _mini(split: str, root: Path | None, image_size: int | None, **options: Any) -> ClassStore:
    from metashot.data.mini_imagenet import mini_imagenet

    return mini_imagenet(split, root, image_size or 84, **options)


@register_dataset("flowers102", image_spec="pretrained")
def _flowers(split: str, root: Path | None, image_size: int | None, **options: Any) -> ClassStore:
    from metashot.data.flowers102 import flowers102

    return flowers102(split, root, image_size or 84, **options)


@register_dataset("folder", image_spec="always", split_classes=folder_classes, ways_from_split=True)
def _folder(split: str, root: Path | None, image_size: int | None, channels: int = 3, invert: bool = False,
            resize_filter: str = "bilinear", spec: ImageSpec | None = None, **options: Any) -> ClassStore:
    """``split`` is a folder of class subfolders (absolute, or relative to ``root``)."""
    from metashot.data.folder import image_folder

    path = Path(split)
    if not path.is_absolute() and root is not None:
        path = root / path
    if spec is None:
        spec = ImageSpec(size=image_size or 84, channels=channels, invert=invert, resize_filter=resize_filter)
    return image_folder(path, spec, **options)


def _text_dataset(name: str) -> None:
    """Register a text dataset: ``split`` as in :func:`metashot.data.text.text_split` (no ``image_size``)."""
    def load(split: str, root: Path | None, image_size: int | None, fold: int = 1, encoder: str | None = None,
             **options: Any) -> ClassStore:
        from metashot.data.text import intents_split, text_split
        from metashot.text.encoder import get_encoder

        enc = get_encoder(encoder) if encoder else None
        if name == "intents":
            return intents_split(split, root, fold, encoder=enc, **options)
        return text_split(name, split, root, fold, encoder=enc, **options)

    register_dataset(name, modality="text")(load)


for _name in ("banking77", "clinc150", "hwu64", "intents"):
    _text_dataset(_name)


__all__ = ["DATASETS", "ClassStore",
           "EpisodeBatch", "EpisodeSampler", "ImageSpec", "preprocess", "load_split",
           "register_dataset", "available_datasets"]
