"""End-to-end CLI: train a tiny ProtoNet, evaluate it (JSON), and predict a folder of images."""

import csv
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metashot.cli import main

REPO = Path(__file__).resolve().parents[1]


def _tiny_train(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    rc = main(["train", str(REPO / "configs/protonet-omniglot-demo.yaml"), "--quiet",
               "--set", "train.steps=4", "--set", "train.val_every=2", "--set", "train.val_episodes=5",
               "--set", "model.backbone_args={in_channels: 1, hidden: 8, out_channels: 8}",
               "--set", f"train.out_dir={out}"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4
    return out


@pytest.mark.slow
def test_train_eval_json(tmp_path, data_root, capsys):
    out = _tiny_train(tmp_path, data_root, capsys)
    assert (out / "final" / "weights.safetensors").is_file() and (out / "best" / "config.json").is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in x for x in lines) and any("val_acc" in x for x in lines)
    rc = main(["eval", str(out), "--episodes", "20", "--json", "--ways", "5", "--shots", "1"])
    assert rc == 0
    printed = capsys.readouterr()
    assert "evaluate" in printed.err, "the progress bar goes to stderr"
    assert len(printed.out.strip().splitlines()) == 1, "stdout holds the JSON object only"
    res = json.loads(printed.out)
    assert {"acc", "ci95"} <= set(res) and 0 <= res["acc"] <= 100 and res["episodes"] == 20
    # the same command gives the same number (fixed episodes)
    main(["eval", str(out), "--episodes", "20", "--json", "--ways", "5", "--shots", "1", "--quiet"])
    printed = capsys.readouterr()
    assert json.loads(printed.out)["acc"] == res["acc"]
    assert "evaluate" not in printed.err, "--quiet draws no progress bar"
    # fewer episodes per forward pass: the same fixed episodes, the same accuracy
    import importlib
    from unittest import mock

    ev_mod = importlib.import_module("metashot.evaluate")  # the package exports a function of that name
    with mock.patch.object(ev_mod, "evaluate", wraps=ev_mod.evaluate) as spy:
        main(["eval", str(out), "--episodes", "20", "--json", "--ways", "5", "--shots", "1", "--quiet",
              "--meta-batch", "3"])
    assert spy.call_args.args[7] == 3
    assert abs(json.loads(capsys.readouterr().out)["acc"] - res["acc"]) <= 1e-9


def test_predict_csv(tmp_path, data_root, capsys):
    out = _tiny_train(tmp_path, data_root, capsys)
    rng = np.random.default_rng(0)
    sup, qry = tmp_path / "support", tmp_path / "query"
    for c in ("alpha", "beta"):
        (sup / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(sup / c / f"{i}.png")
    qry.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(qry / f"q{i}.jpg")
    csv_path = tmp_path / "pred.csv"
    args = ["predict", str(out), "--support", str(sup), "--query", str(qry), "--output", str(csv_path)]
    assert main(args) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 3 and {r["label"] for r in rows} <= {"alpha", "beta"}
    assert all(0.0 <= float(r["confidence"]) <= 1.0 for r in rows)


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: {stepz: 1}\n")
    assert main(["train", str(bad)]) == 2
    assert "stepz" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "metashot.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "eval" in r.stdout


def test_eval_counts_below_one_are_one_line_errors(tmp_path, capsys):
    import pytest

    for flag in ("--ways", "--shots", "--queries", "--episodes", "--meta-batch", "--threads"):
        for value in ("0", "-2"):
            with pytest.raises(SystemExit) as exc:
                main(["eval", str(tmp_path / "missing"), flag, value])
            assert exc.value.code == 2
            err = capsys.readouterr().err
            assert f"argument {flag}: must be >= 1, got {value}" in err, err
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path / "missing"), "--ways", "five"])
    assert "argument --ways: expected an integer >= 1, got 'five'" in capsys.readouterr().err


def test_eval_flags_given_are_used_not_the_config(monkeypatch, capsys):
    import metashot.checkpoint
    import metashot.data
    import metashot.data.checks
    from metashot.evaluate import _given

    assert _given(0, 15) == 0 and _given(None, 15) == 15  # 0 is a value, not "not given"
    ev = {"ways": 5, "shots": 1, "queries": 15, "episodes": 600, "seed": 1234, "meta_batch": 16}
    meta = {"config": {"data": {"dataset": "folder", "test_split": "test"}, "eval": ev}}
    monkeypatch.setattr(metashot.checkpoint, "load_checkpoint", lambda *a, **k: (object(), meta))
    monkeypatch.setattr(metashot.data, "load_split", lambda *a, **k: object())
    monkeypatch.setattr(metashot.data.checks, "check_channels", lambda *a, **k: None)
    calls = []

    def fake_evaluate(learner, store, *args, **kwargs):
        calls.append(args[:6])
        return {"acc": 0.0, "ci95": 0.0}

    monkeypatch.setattr(importlib.import_module("metashot.evaluate"), "evaluate", fake_evaluate)
    flags = ["--ways", "3", "--shots", "2", "--queries", "4", "--episodes", "7", "--seed", "0",
             "--meta-batch", "5", "--json"]
    assert main(["eval", "ckpt", *flags]) == 0 and main(["eval", "ckpt", "--json"]) == 0
    assert calls == [(3, 2, 4, 7, 0, 5), (5, 1, 15, 600, 1234, 16)]
    capsys.readouterr()


def _drawings(folder, names, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        a = np.full((28, 28), 255, np.uint8)
        a[rng.integers(2, 20):, rng.integers(2, 20)] = 0  # a dark stroke on white paper
        Image.fromarray(a).save(folder / n)


def test_predict_query_and_support_sides_skip_and_fail_alike(tmp_path, capsys, recwarn):
    """Both sides: other files skipped with ONE warning naming every one; an unreadable image is an error."""
    sup, qry = tmp_path / "support", tmp_path / "query"
    for c in ("a", "b"):
        _drawings(sup / c, ["1.png", "2.png"])
        for i in range(4):
            (sup / c / f"note{i}.txt").write_text("x")
    _drawings(qry, ["q1.png"])
    _drawings(qry / "deeper", ["q2.png"])
    (qry / "readme.md").write_text("x")
    (qry / "deeper" / "scan.pdf").write_bytes(b"%PDF")
    (qry / ".hidden.png").write_bytes(b"not data")  # hidden entries are not data, on both sides
    csv_path = tmp_path / "pred.csv"
    args = ["predict", "protonet-omniglot", "--support", str(sup), "--query", str(qry),
            "--output", str(csv_path)]
    assert main(args) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert sorted(Path(r["file"]).name for r in rows) == ["q1.png", "q2.png"]
    msgs = [str(w.message) for w in recwarn if "ignoring" in str(w.message)]
    support_msgs = [m for m in msgs if str(sup) in m]
    query_msgs = [m for m in msgs if str(qry) in m]
    assert len(support_msgs) == 1 and all(f"note{i}.txt" in support_msgs[0] for i in range(4))
    assert len(query_msgs) == 1 and "readme.md" in query_msgs[0] and "scan.pdf" in query_msgs[0]
    assert ".hidden" not in " ".join(msgs)
    for side in (qry, sup / "a"):
        (side / "broken.png").symlink_to(tmp_path / "nowhere.png")
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "broken.png" in err and "cannot be read" in err
        (side / "broken.png").unlink()


def test_predict_csv_escapes_labels_a_spreadsheet_would_run(tmp_path):
    sup, qry = tmp_path / "support", tmp_path / "query"
    labels = ["=HYPERLINK(1)", "+cmd", "-2", "@SUM(A1)", "plain"]
    for i, c in enumerate(labels):
        _drawings(sup / c, ["1.png"], seed=i)
    _drawings(qry, [f"q{i}.png" for i in range(6)], seed=9)
    csv_path = tmp_path / "pred.csv"
    assert main(["predict", "protonet-omniglot", "--support", str(sup), "--query", str(qry),
                 "--output", str(csv_path)]) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 6
    for r in rows:
        assert r["label"] in {"'=HYPERLINK(1)", "'+cmd", "'-2", "'@SUM(A1)", "plain"}, r["label"]
        assert not r["label"].startswith(("=", "+", "-", "@"))
