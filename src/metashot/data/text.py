"""Few-shot intent detection data: CLINC150, BANKING77 and HWU64 as labelled sentences and embedding stores.

Sources (under ``<root>/text``, root = ``$METASHOT_DATA``; see the data README):

- CLINC150 / OOS-eval (Larson et al., EMNLP 2019): ``clinc150/data_full.json``, parts ``train`` / ``val`` /
  ``test`` (150 in-scope intents, 100 / 20 / 30 sentences each) and ``oos_train`` / ``oos_val`` / ``oos_test``
  (label ``oos``).
- BANKING77 (Casanueva et al. 2020): ``banking77/{train,test}.csv`` (``text,category``), 77 intents.
- HWU64 (Liu et al. 2019): ``hwu64/kfold1_original/{train,test}.csv`` (``;``-separated; label
  ``scenario_intent``, text ``answer_from_anno``), parts ``kfold_train`` / ``kfold_test`` (together the
  11,036 sentences of ProtAugment's HWU64), and the few-shot literature's
  ``hwu64/processed_jianguoz/{train,valid,test}`` (parts ``train`` / ``valid`` / ``test``).

Splits shipped with the package (``metashot/data/splits/text``):

- ``protaugment/{BANKING77,HWU64,OOS}/{01..05}/labels.{train,valid,test}.txt``: the class-disjoint episodic
  folds of ProtAugment (Dopierre et al., ACL 2021; Apache-2.0, LICENSE.txt beside them). OOS means CLINC150's
  150 in-scope intents; HWU64 labels are written ``scenario/intent`` there and ``scenario_intent`` here.
- ``fullway/{banking77,clinc150,hwu64}/train_{5,10}.txt``: the fixed K-shot training subsets of the full-way
  protocol (DNNC / CPFT), stored as 0-based row numbers into the ``train`` part, so the package ships no
  sentences. :func:`fullway_rows_from_files` rebuilds them from the shared ``seq.in`` / ``label`` files (a
  test checks both agree).

Sentence embeddings are computed once per (dataset, part, encoder) and cached as a :class:`ClassStore` of
float32 [M, D] rows (classes sorted by name, rows in file order within a class); episodes are drawn from that
cache by the ordinary :class:`~metashot.data.episodes.EpisodeSampler`.
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from metashot._env import data_root
from metashot.data.store import ClassStore, group_by_label  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from metashot.text.encoder import TextEncoder

TEXT_DATASETS = ("banking77", "clinc150", "hwu64")
PROTAUGMENT_NAME = {"banking77": "BANKING77", "clinc150": "OOS", "hwu64": "HWU64"}
PARTS = {
    "banking77": ("train", "test"),
    "clinc150": ("train", "val", "test", "oos_train", "oos_val", "oos_test"),
    "hwu64": ("kfold_train", "kfold_test", "train", "valid", "test"),
}
# The sentences ProtAugment's class-disjoint folds draw from (every labelled in-scope sentence).
EPISODIC_POOL = {
    "banking77": ("train", "test"),
    "clinc150": ("train", "val", "test"),
    "hwu64": ("kfold_train", "kfold_test"),
}
FULLWAY_TEST = {"banking77": "test", "clinc150": "test", "hwu64": "test"}
FOLDS = (1, 2, 3, 4, 5)
SHOTS_SUBSETS = (5, 10)
OOS_LABEL = "oos"

Pairs = list[tuple[str, str]]


def text_root(root: str | Path | None = None) -> Path:
    """``<root>/text`` (root defaults to ``$METASHOT_DATA``)."""
    return (Path(root) if root is not None else data_root()) / "text"


def _check_dataset(dataset: str) -> str:
    d = dataset.lower()
    if d not in TEXT_DATASETS:
        raise ValueError(f"unknown text dataset {dataset!r}; use one of {TEXT_DATASETS}")
    return d


def _need(path: Path, dataset: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset}: file {path} not found. Place the shared text data under <data root>/text (set "
            f"METASHOT_DATA to the folder holding text/; see the data README)"
        )
    return path


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); re-save it as UTF-8") from e


def _checked(pairs: Pairs, source: Path) -> Pairs:
    for i, (text, label) in enumerate(pairs):
        if not text.strip():
            raise ValueError(f"{source}: example {i} (label {label!r}) has an empty text")
        if not label:
            raise ValueError(f"{source}: example {i} ({text[:40]!r}) has an empty label")
    return pairs


def _lines(path: Path) -> list[str]:
    return _read_text(path).splitlines()


def _seq_label(folder: Path, dataset: str) -> Pairs:
    texts = _lines(_need(folder / "seq.in", dataset))
    labels = _lines(_need(folder / "label", dataset))
    if len(texts) != len(labels):
        raise ValueError(f"{folder}: seq.in has {len(texts)} lines, label {len(labels)}; they must align")
    return _checked([(t.strip(), y.strip()) for t, y in zip(texts, labels, strict=True)], folder / "seq.in")


def read_part(dataset: str, part: str, root: str | Path | None = None) -> Pairs:
    """The (text, label) pairs of one part of a dataset, in file order.

    Args:
        dataset: ``banking77``, ``clinc150`` or ``hwu64``.
        part: one of :data:`PARTS` [dataset].
    """
    dataset = _check_dataset(dataset)
    if part not in PARTS[dataset]:
        raise ValueError(f"{dataset}: unknown part {part!r}; use one of {PARTS[dataset]}")
    base = text_root(root)
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size)
                  for p in part_sources(dataset, root) if p.is_file())
    return list(_read_part_cached(dataset, part, str(base), stamp))


@functools.lru_cache(maxsize=32)
def _read_part_cached(dataset: str, part: str, base_dir: str, stamp: tuple) -> tuple[tuple[str, str], ...]:
    # ``stamp`` (the source files' identity) keys the cache, so an edited file is parsed again.
    return tuple(_parse_part(dataset, part, Path(base_dir)))


def _parse_part(dataset: str, part: str, base: Path) -> Pairs:
    if dataset == "banking77":
        path = _need(base / "banking77" / f"{part}.csv", dataset)
        rows = list(csv.DictReader(_read_text(path).splitlines()))
        if rows and not {"text", "category"} <= set(rows[0]):
            raise ValueError(f"{path}: expected the header text,category, got {list(rows[0])}")
        return _checked([(r["text"].strip(), r["category"].strip()) for r in rows], path)
    if dataset == "clinc150":
        path = _need(base / "clinc150" / "data_full.json", dataset)
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from e
        if part not in data:
            raise ValueError(f"{path}: no {part!r} list (keys: {sorted(data)})")
        return _checked([(str(t).strip(), str(y).strip()) for t, y in data[part]], path)
    if part.startswith("kfold_"):
        path = _need(base / "hwu64" / "kfold1_original" / f"{part[len('kfold_'):]}.csv", dataset)
        rows = list(csv.DictReader(_read_text(path).splitlines(), delimiter=";"))
        need = {"scenario", "intent", "answer_from_anno"}
        if rows and not need <= set(rows[0]):
            raise ValueError(f"{path}: expected columns {sorted(need)}, got {list(rows[0])}")
        pairs = [(r["answer_from_anno"].strip(), f"{r['scenario']}_{r['intent']}") for r in rows]
        return _checked(pairs, path)
    return _seq_label(base / "hwu64" / "processed_jianguoz" / part, dataset)


def _split_file(rel: str) -> str:
    return resources.files("metashot.data").joinpath(f"splits/text/{rel}").read_text(encoding="utf-8")


def protaugment_labels(dataset: str, fold: int, split: str) -> list[str]:
    """Intent names of a ProtAugment fold split (``train`` / ``valid`` / ``test``), as named here."""
    dataset = _check_dataset(dataset)
    split = {"val": "valid"}.get(split, split)
    if split not in ("train", "valid", "test"):
        raise ValueError(f"ProtAugment split must be train, valid or test, got {split!r}")
    if int(fold) not in FOLDS:
        raise ValueError(f"ProtAugment fold must be one of {FOLDS}, got {fold}")
    text = _split_file(f"protaugment/{PROTAUGMENT_NAME[dataset]}/{int(fold):02d}/labels.{split}.txt")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if dataset == "hwu64":
        names = [n.replace("/", "_", 1) for n in names]
    return names


def fullway_rows(dataset: str, shots: int) -> np.ndarray:
    """Shipped 0-based rows into the ``train`` part forming the fixed ``shots``-shot subset, int64 [C*K]."""
    dataset = _check_dataset(dataset)
    if shots not in SHOTS_SUBSETS:
        raise ValueError(f"full-way subsets exist for shots in {SHOTS_SUBSETS}, got {shots}")
    text = _split_file(f"fullway/{dataset}/train_{shots}.txt")
    return np.array([int(x) for x in text.split()], dtype=np.int64)


def fullway_rows_from_files(dataset: str, shots: int, root: str | Path | None = None) -> np.ndarray:
    """Rebuild :func:`fullway_rows` from the shared ``train_K/{seq.in,label}`` files.

    Sentences there are lowercased (and BANKING77's labels capitalised), so they are matched to the ``train``
    part case-insensitively; a sentence listed twice takes the next unused matching row.
    """
    dataset = _check_dataset(dataset)
    base = text_root(root)
    folder = {"banking77": base / "splits" / "fullway" / "BANKING77",
              "clinc150": base / "splits" / "fullway" / "CLINC150",
              "hwu64": base / "hwu64" / "processed_jianguoz"}[dataset] / f"train_{shots}"
    subset = _seq_label(folder, dataset)
    index: dict[tuple[str, str], list[int]] = {}
    for i, (t, y) in enumerate(read_part(dataset, "train", root)):
        index.setdefault((t.lower(), y.lower()), []).append(i)
    rows = []
    for t, y in subset:
        cands = index.get((t.lower(), y.lower()))
        if not cands:
            raise ValueError(f"{folder}: sentence {t!r} ({y}) is not in the {dataset} train part")
        rows.append(cands.pop(0))
    return np.asarray(rows, dtype=np.int64)


# ----------------------------------------------------------------------------------------------- stores


def part_sources(dataset: str, root: str | Path | None = None) -> list[Path]:
    """Files whose identity keys a dataset's embedding caches."""
    base = text_root(root)
    return {"banking77": [base / "banking77" / "train.csv", base / "banking77" / "test.csv"],
            "clinc150": [base / "clinc150" / "data_full.json"],
            "hwu64": sorted((base / "hwu64").rglob("*.csv")) + sorted((base / "hwu64").rglob("label"))
            + sorted((base / "hwu64").rglob("seq.in"))}[dataset]


def embed_part(dataset: str, part: str, root: str | Path | None = None, encoder: TextEncoder | None = None,
               cache_dir: Path | None = None, rows: Sequence[int] | None = None,
               tag: str | None = None) -> ClassStore:
    """Embeddings of one part (optionally only ``rows`` of it) as a cached store of float32 [M, D].

    The first call encodes every sentence (minutes for a full dataset on a CPU); later calls memory-map the
    cache and never touch the encoder.
    """
    from metashot.text.cache import embedding_store

    dataset = _check_dataset(dataset)
    pairs = read_part(dataset, part, root)
    if rows is not None:
        rows = [int(r) for r in rows]
        bad = [r for r in rows if not 0 <= r < len(pairs)]
        if bad:
            raise ValueError(f"{dataset}/{part}: rows {bad[:3]} are outside 0..{len(pairs) - 1}")
        pairs = [pairs[r] for r in rows]
    name = tag or part
    return embedding_store(f"text-{dataset}-{name}", part_sources(dataset, root), pairs, encoder,
                           params={"dataset": dataset, "part": part, "rows": rows},
                           meta={"dataset": dataset, "name": f"{dataset}/{name}", "part": part},
                           cache_dir=cache_dir)


def merge_stores(stores: Sequence[ClassStore], meta: dict[str, Any] | None = None) -> ClassStore:
    """One store from several with the same item shape: a class present in several gets all their rows."""
    by: dict[str, list[np.ndarray]] = {}
    base = 0
    for s in stores:
        for c, n in enumerate(s.class_names):
            by.setdefault(n, []).append(np.arange(s.offsets[c], s.offsets[c + 1]) + base)
        base += len(s)
    names = sorted(by)
    rows = [np.concatenate(by[n]) for n in names]
    counts = [len(r) for r in rows]
    allx = torch.cat([torch.as_tensor(np.asarray(s.images)) for s in stores])  # one copy of every row
    x = allx.index_select(0, torch.from_numpy(np.concatenate(rows)))
    return ClassStore(x, np.concatenate([[0], np.cumsum(counts)]), names, dict(meta or {}))


def text_split(dataset: str, split: str = "train", root: str | Path | None = None, fold: int = 1,
               encoder: TextEncoder | None = None, cache_dir: Path | None = None) -> ClassStore:
    """The embedding store of a named split.

    ``split``:
        ``train`` / ``val`` (``valid``) / ``test``: ProtAugment fold ``fold``'s intents, all their sentences
        (the episodic protocol); ``all``: every in-scope sentence;
        ``fullway_train_5`` / ``fullway_train_10``: the fixed K-shot subsets of all intents;
        ``fullway_test``: the full-way test set; ``oos_val`` / ``oos_test``: CLINC150's out-of-scope
        sentences; any part name of :data:`PARTS` gives that part as is.
    """
    dataset = _check_dataset(dataset)
    meta: dict[str, Any] = {"dataset": dataset, "split": split}
    enc_meta = {}
    if split in ("train", "val", "valid", "test", "all"):
        parts = [embed_part(dataset, p, root, encoder, cache_dir) for p in EPISODIC_POOL[dataset]]
        pool = merge_stores(parts)
        enc_meta = {"text_encoder": _encoder_name(encoder)}
        if split == "all":
            store = pool
        else:
            store = pool.subset(protaugment_labels(dataset, fold, split))
            meta["fold"] = int(fold)
    elif split.startswith("fullway_train_"):
        shots = int(split.rsplit("_", 1)[1])
        store = embed_part(dataset, "train", root, encoder, cache_dir,
                           rows=fullway_rows(dataset, shots).tolist(), tag=f"train{shots}shot")
        enc_meta = {"text_encoder": _encoder_name(encoder)}
    elif split == "fullway_test":
        store = embed_part(dataset, FULLWAY_TEST[dataset], root, encoder, cache_dir)
        enc_meta = {"text_encoder": _encoder_name(encoder)}
    elif split in PARTS[dataset]:
        store = embed_part(dataset, split, root, encoder, cache_dir)
        enc_meta = {"text_encoder": _encoder_name(encoder)}
    else:
        raise ValueError(f"{dataset}: unknown split {split!r}; use train/val/test (ProtAugment fold), all, "
                         f"fullway_train_5, fullway_train_10, fullway_test or a part {PARTS[dataset]}")
    meta.update(enc_meta, name=f"{dataset}/{split}" + (f"/fold{int(fold)}" if "fold" in meta else ""))
    store.meta = dict(store.meta, **meta)
    return store


def intents_split(split: str = "train", root: str | Path | None = None, fold: int = 1,
                  datasets: Sequence[str] = TEXT_DATASETS, encoder: TextEncoder | None = None,
                  cache_dir: Path | None = None) -> ClassStore:
    """ProtAugment fold ``fold``'s ``split`` intents of several datasets in one store (``dataset/intent``).

    Used to meta-train one general adapter: its ``train`` split holds no test intent of any of the datasets.
    """
    parts = []
    for d in datasets:
        s = text_split(d, split, root, fold, encoder, cache_dir)
        parts.append(ClassStore(s.images, s.offsets, [f"{d}/{n}" for n in s.class_names]))
    store = merge_stores(parts)
    store.meta = {"dataset": "intents", "split": split, "fold": int(fold), "datasets": list(datasets),
                  "text_encoder": _encoder_name(encoder), "name": f"intents/{split}/fold{int(fold)}"}
    return store


def _encoder_name(encoder: TextEncoder | None) -> str:
    from metashot.text.encoder import DEFAULT_ENCODER

    return encoder.name if encoder is not None else DEFAULT_ENCODER
