"""fit/predict on sentences with the bundled text model, and `metashot predict` on sentence files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import metashot
from metashot.cli import main
from metashot.text.glue import read_labelled, read_sentences, text_encoder_of

SUPPORT = [("where is my card", "card"), ("my card still hasn't arrived", "card"),
           ("wake me up at 7", "alarm"), ("set an alarm for 6 am", "alarm"),
           ("play some jazz", "music"), ("put on my workout playlist", "music")]
QUERIES = ["when will my new card come", "alarm at noon please", "I want to hear the beatles"]


@pytest.fixture(scope="module")
def clf(minilm):  # minilm: fails clearly when the text extra is missing
    return metashot.load("protonet-minilm-intents")


def test_bundled_model_is_small_and_text() -> None:
    from metashot.checkpoint import bundled_path

    path = bundled_path("protonet-minilm-intents")
    assert path is not None and (path / "weights.safetensors").stat().st_size < 2 * 1024 * 1024
    meta = {"config": {"data": {"dataset": "intents", "options": {}}}}
    assert text_encoder_of(meta) == "all-MiniLM-L6-v2"
    assert text_encoder_of({"config": {"data": {"dataset": "omniglot"}}}) is None


@pytest.mark.slow
def test_fit_predict_strings(clf) -> None:
    assert clf.text_encoder == "all-MiniLM-L6-v2"
    texts, labels = zip(*SUPPORT, strict=True)
    clf.fit(list(texts), list(labels))
    assert list(clf.classes_) == ["alarm", "card", "music"]
    assert clf.predict(QUERIES).tolist() == ["card", "alarm", "music"]
    proba = clf.predict_proba(QUERIES)
    assert proba.shape == (3, 3) and abs(proba.sum(1) - 1).max() < 1e-5
    with pytest.raises(ValueError, match="empty string"):
        clf.predict(["fine", ""])
    with pytest.raises(TypeError, match="list of strings"):
        clf.predict("a bare string")


@pytest.mark.slow
def test_cli_predict_text(clf, tmp_path: Path, capsys) -> None:
    sup = tmp_path / "support.csv"
    with open(sup, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(SUPPORT)
    q = tmp_path / "queries.txt"
    q.write_text("\n".join(QUERIES) + "\n\n", encoding="utf-8")
    out = tmp_path / "pred.csv"
    assert main(["predict", "protonet-minilm-intents", "--support", str(sup), "--query", str(q),
                 "--output", str(out)]) == 0
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [r["label"] for r in rows] == ["card", "alarm", "music"] and [r["text"] for r in rows] == QUERIES
    # a threshold of 1 (above every softmax confidence here) rejects everything as out of scope
    assert main(["predict", "protonet-minilm-intents", "--support", str(sup), "--query", str(q),
                 "--threshold", "1"]) == 0
    assert [r.split(",")[1] for r in capsys.readouterr().out.strip().splitlines()[1:]] == ["oos"] * 3
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait\n")
    assert main(["predict", "protonet-minilm-intents", "--support", str(sup), "--query", str(bad)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_sentence_files(tmp_path: Path) -> None:
    p = tmp_path / "q.csv"
    p.write_text("id,text\n1,hello there\n2,book a flight\n", encoding="utf-8")
    assert read_sentences(p) == ["hello there", "book a flight"]
    p.write_text("id,text\n1,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 2 has an empty text"):
        read_sentences(p)
    s = tmp_path / "s.csv"
    s.write_text("utterance,intent\nhi,greet\n", encoding="utf-8")
    assert read_labelled(s) == (["hi"], ["greet"])
    s.write_text("sentence,foo\nhi,greet\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no label column"):
        read_labelled(s)
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no sentences"):
        read_sentences(tmp_path / "empty.txt")
