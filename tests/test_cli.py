"""End-to-end CLI: train a tiny ProtoNet, evaluate it (JSON), and predict a folder of images."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "metashot.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "eval" in r.stdout
