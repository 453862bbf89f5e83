"""``metashot fit`` and ``metashot info`` (issue 28): fit a classifier on a folder and save it; describe a
saved classifier, a checkpoint folder or a bundled model. The CLI parses and calls these; torch is imported
only inside them, so ``metashot --help`` stays instant."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def check_out(out: str | Path, overwrite: bool) -> Path:
    """``--out``: a new folder, or with ``overwrite`` a saved classifier (or an empty folder) to replace."""
    from metashot.fitted import is_fitted_folder

    out = Path(out)
    if not out.exists():
        return out
    if out.is_dir() and (is_fitted_folder(out) or not any(out.iterdir())):
        if overwrite or not any(out.iterdir()):
            return out
        raise ValueError(f"--out {out} holds a saved classifier; pass --overwrite to replace it, or give "
                         f"another --out")
    what = "is a file" if not out.is_dir() else "is a folder that holds other files"
    raise ValueError(f"--out {out} {what}, not a saved classifier (--overwrite replaces only those); give a "
                     f"new folder")


def fit_and_save(model: str, support: str | Path, out: str | Path, *, overwrite: bool = False,
                 device: str = "cpu", copy_photos: bool = False) -> dict[str, Any]:
    """``metashot fit``: load ``model``, fit it on ``support`` (a folder of class subfolders, the subfolder
    names are the labels), save it into folder ``out``; returns :func:`metashot.fitted.describe` of it."""
    from metashot.classifier import load
    from metashot.data.folder import list_folder
    from metashot.fitted import describe, require_embedded

    out = check_out(out, overwrite)
    support = Path(support)
    classes = list_folder(support)
    if len(classes) < 2:
        raise ValueError(f"--support {support} holds {len(classes)} class subfolder ({', '.join(classes)}); "
                         f"a classifier needs at least 2: add one subfolder of images per class")
    clf = load(model, device)
    if clf.image_spec is None:
        raise ValueError(f"model {model!r} is not an image model; metashot fit takes a folder of images (fit "
                         f"text models in Python: clf.fit(texts, labels); clf.save(folder))")
    require_embedded(clf, f"metashot fit {model}")
    images = [f for files in classes.values() for f in files]
    clf.fit(images, [name for name, files in classes.items() for _ in files])
    clf.save(out, copy_photos=copy_photos)
    return describe(out)


def check_support(clf: Any, support: str | Path | None, checkpoint: str) -> None:
    """``metashot predict`` without ``--support`` needs a saved classifier (fitted); one line otherwise."""
    if support is None and not getattr(clf, "is_lite", False) and clf.__dict__.get("_predictor") is None:
        raise ValueError(f"{checkpoint} is a model, not a saved classifier: give --support DIR (a folder "
                         f"of class subfolders), or first save one with `metashot fit {checkpoint} --support "
                         f"DIR --out FOLDER` and predict with FOLDER")


def _spec_line(spec: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in spec.items()) if spec else "(none: not an image model)"


def info(path: str | Path) -> dict[str, Any]:
    """``metashot info``: a saved classifier's description, or a checkpoint's (folder, run or bundled name)
    name, algorithm, preprocessing and card."""
    from metashot.checkpoint import bundled_names, bundled_path, read_meta, resolve
    from metashot.fitted import describe, is_fitted_folder, read_description

    if is_fitted_folder(path):
        from metashot.lite import open_lite

        desc = read_description(path)
        lite, why = open_lite(path)  # which path metashot.load / predict will take here, and why
        return {"kind": "saved classifier", **describe(path), "image_spec": desc.get("image_spec"),
                "text_encoder": desc.get("text_encoder"), "card": (desc.get("model") or {}).get("card"),
                "without_torch": lite is not None, "without_torch_why_not": why or None}
    p = Path(path)
    if not p.exists() and bundled_path(str(path)) is None:
        names = ", ".join(bundled_names())
        raise ValueError(f"{path} is neither a saved classifier (folder with classifier.json), a checkpoint "
                         f"folder (with config.json) nor a bundled model ({names}); check the path")
    folder = resolve(path)
    meta = read_meta(folder)
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    kind = "bundled model" if folder == bundled_path(str(path)) else "checkpoint"
    return {"kind": kind, "path": str(folder),
            "name": cfg.get("name"), "algorithm": meta.get("algorithm"), "image_spec": meta.get("image_spec"),
            "card": meta.get("card") or "(no card)"}


def info_lines(d: dict[str, Any]) -> list[str]:
    """:func:`info` as the lines ``metashot info`` prints."""
    from metashot.cards import _card_fields

    if d["kind"] != "saved classifier":
        out = [f"{d['path']}: {d['kind']} {d['name'] or ''}".rstrip(), f"  algorithm:     {d['algorithm']}",
               f"  preprocessing: {_spec_line(d['image_spec'])}"]
        return out + [f"  {k + ':':14s} {v}" for k, v in _card_fields(d["card"]).items()]
    out = [f"{d['path']}: saved classifier (metashot {d['metashot_version']})",
           f"  model:         {d['model']} ({d['algorithm']}), digest {d['model_digest']}",
           f"  preprocessing: {_spec_line(d['image_spec'])}" if d["image_spec"] or not d["text_encoder"]
           else f"  text encoder:  {d['text_encoder']}",
           f"  fitted:        {d['fitted_at']} (saved {d['saved_at']})",
           f"  classes:       {d['classes']}, {d['photos']} support examples ({d['embedding_dim']}-d "
           f"embeddings{'; photos copied' if d['photos_copied'] else ''})"]
    why = d["without_torch_why_not"]
    out.append("  predicts:      without torch (ONNX Runtime + NumPy, metashot.lite)" if d["without_torch"]
               else f"  predicts:      through torch (the lite path does not apply: {why})")
    return out + [f"    {name}: {n}" for name, n in d["per_class"].items()]


def cmd_fit(a: argparse.Namespace) -> int:
    d = fit_and_save(a.model, a.support, a.out, overwrite=a.overwrite, device=a.device,
                     copy_photos=a.copy_photos)
    print(json.dumps(d) if a.json else f"saved {d['path']}: {d['model']} fitted on {d['classes']} classes, "
          f"{d['photos']} photos (metashot info {d['path']}; metashot predict {d['path']} --query DIR)")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    d = info(a.path)
    print(json.dumps(d) if a.json else "\n".join(info_lines(d)))
    return 0


_JSON = ("--json", dict(action="store_true", help="print one JSON object"))
# cli.COMMANDS rows: (command path, help, function, [(flag, add_argument keywords)]).
COMMANDS: list[tuple[tuple[str, ...], str, Any, list[tuple[str, dict[str, Any]]]]] = [
    (("fit",), "fit a classifier on a folder of class subfolders and save it (for predict without "
               "--support)", cmd_fit, [
        ("model", dict(help="checkpoint folder or bundled name, e.g. photos (metashot models lists them)")),
        ("--support", dict(required=True, help="folder of class subfolders with a few images each; the "
                                               "subfolder names are the labels (at least 2)")),
        ("--out", dict(required=True, help="new folder to save the classifier into (safetensors + JSON)")),
        ("--overwrite", dict(action="store_true", help="replace --out when it holds a saved classifier")),
        ("--copy-photos", dict(action="store_true", help="also copy the support photos into OUT/photos")),
        ("--device", dict(default="cpu")), ("--quiet", dict(action="store_true", help="no progress bars")),
        _JSON]),
    (("info",), "describe a saved classifier (model, classes, counts, fit date) or a model's card",
     cmd_info, [("path", dict(help="saved classifier folder, checkpoint folder, run folder or bundled name")),
                _JSON]),
]
