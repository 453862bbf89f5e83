"""Text dataset parsers on the shared files, ProtAugment fold disjointness, full-way subsets, bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from metashot.data import text as T


@pytest.mark.parametrize("dataset,part,n,classes", [
    ("banking77", "train", 10003, 77), ("banking77", "test", 3080, 77),
    ("clinc150", "train", 15000, 150), ("clinc150", "val", 3000, 150), ("clinc150", "test", 4500, 150),
    ("clinc150", "oos_test", 1000, 1), ("hwu64", "kfold_train", 9960, 64), ("hwu64", "kfold_test", 1076, 64),
    ("hwu64", "train", 8954, 64), ("hwu64", "test", 1076, 64),
])
def test_parsers_counts(text_data_root: Path, dataset: str, part: str, n: int, classes: int) -> None:
    pairs = T.read_part(dataset, part, text_data_root)
    assert len(pairs) == n
    assert len({y for _, y in pairs}) == classes
    assert all(t.strip() and y for t, y in pairs)


def test_parsers_content(text_data_root: Path) -> None:
    first = T.read_part("banking77", "train", text_data_root)[0]
    assert first == ("I am still waiting on my card?", "card_arrival")
    assert T.read_part("hwu64", "kfold_train", text_data_root)[0] == ("what alarms do i have set right now",
                                                                      "alarm_query")
    clinc = T.read_part("clinc150", "oos_val", text_data_root)
    assert {y for _, y in clinc} == {T.OOS_LABEL}
    assert Counter(y for _, y in T.read_part("clinc150", "train", text_data_root)).most_common(1)[0][1] == 100


@pytest.mark.parametrize("dataset", T.TEXT_DATASETS)
def test_protaugment_folds_disjoint_and_complete(text_data_root: Path, dataset: str) -> None:
    intents = {y for p in T.EPISODIC_POOL[dataset] for _, y in T.read_part(dataset, p, text_data_root)}
    for fold in T.FOLDS:
        tr, va, te = (set(T.protaugment_labels(dataset, fold, s)) for s in ("train", "valid", "test"))
        assert not (tr & va) and not (tr & te) and not (va & te)
        assert tr | va | te == intents, f"{dataset} fold {fold} does not cover the dataset's intents"
    # The folds are different class partitions.
    assert len({tuple(sorted(T.protaugment_labels(dataset, f, "test"))) for f in T.FOLDS}) == 5


@pytest.mark.parametrize("dataset", T.TEXT_DATASETS)
@pytest.mark.parametrize("shots", T.SHOTS_SUBSETS)
def test_fullway_rows_match_shared_files(text_data_root: Path, dataset: str, shots: int) -> None:
    rows = T.fullway_rows(dataset, shots)
    np.testing.assert_array_equal(rows, T.fullway_rows_from_files(dataset, shots, text_data_root))
    pairs = T.read_part(dataset, "train", text_data_root)
    counts = Counter(pairs[r][1] for r in rows)
    assert len(set(rows.tolist())) == len(rows)
    assert set(counts.values()) == {shots}
    assert len(counts) == {"banking77": 77, "clinc150": 150, "hwu64": 64}[dataset]


def test_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "text" / "banking77").mkdir(parents=True)
    bad = tmp_path / "text" / "banking77" / "train.csv"
    bad.write_bytes(b"text,category\ncaf\xe9 card,card_arrival\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        T.read_part("banking77", "train", tmp_path)
    bad.write_text("text,category\n  ,card_arrival\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty text"):
        T.read_part("banking77", "train", tmp_path)
    with pytest.raises(FileNotFoundError, match="test.csv"):
        T.read_part("banking77", "test", tmp_path)
    with pytest.raises(ValueError, match="unknown text dataset"):
        T.read_part("snips", "train", tmp_path)
    with pytest.raises(ValueError, match="fold"):
        T.protaugment_labels("banking77", 6, "train")
