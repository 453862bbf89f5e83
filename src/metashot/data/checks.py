"""Checks that a checkpoint and a dataset fit together, run before any episode so that a mismatch is one clear
sentence instead of a convolution's shape error deep inside the model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metashot.data.preprocess import ImageSpec

if TYPE_CHECKING:
    from metashot.data.store import ClassStore


def check_channels(store: ClassStore, image_spec: ImageSpec | dict[str, Any] | None, where: str,
                   trained_on: str | None = None) -> None:
    """Raise ValueError when ``store`` does not hold images with the channels of ``image_spec``.

    Args:
        store: the dataset split about to be evaluated; ``images`` is [M, C, H, W] (or [M, D] features).
        image_spec: the checkpoint's preprocessing (an ImageSpec or its dict); None (a text or tensor model)
            records no image shape, so there is nothing to compare.
        where: names the model in the message, e.g. ``"checkpoint protonet-omniglot"``.
        trained_on: the dataset the checkpoint was trained on, suggested in the message.
    """
    if image_spec is None:
        return
    spec = ImageSpec.from_dict(image_spec) if isinstance(image_spec, dict) else image_spec
    shape = tuple(store.images.shape)
    dataset = store.meta.get("name") or store.meta.get("dataset") or "the dataset"
    wants = f"{where} expects {spec.channels}-channel {spec.size}x{spec.size} images (its preprocessing)"
    own_kind = "evaluate it on data of its own kind" + (f" ({trained_on})" if trained_on else "")
    if len(shape) != 4:
        dims = ", ".join(map(str, shape))
        raise ValueError(f"{wants}, but dataset {dataset} holds features of shape [{dims}], not images; "
                         f"{own_kind}")
    if shape[1] != spec.channels:
        raise ValueError(f"{wants}, but dataset {dataset} has {shape[1]}-channel images; {own_kind}, "
                         f"or use a checkpoint trained on {shape[1]}-channel images")
