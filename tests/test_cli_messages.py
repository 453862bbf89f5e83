"""One-line errors, truthful messages and what a newcomer looks for (issue 17, items 11-13)."""

from __future__ import annotations

import ast
import csv
import hashlib
import importlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from metashot.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "protonet-omniglot-demo.yaml")


def _subparser(*path: str):  # type: ignore[no-untyped-def]
    p = build_parser()
    for name in path:
        p = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
    return p


def _option_help(parser, option: str) -> str:  # type: ignore[no-untyped-def]
    return next(a.help for a in parser._actions if option in a.option_strings)


# --- 11: tracebacks -> one-line errors ------------------------------------------------------------


def test_cuda_device_without_cuda_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["train", DEMO, "--quiet", "--set", "train.device=cuda", "--set", f"train.out_dir={tmp_path}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "train.device" in err and "CUDA is not available" in err and "Traceback" not in err
    assert main(["eval", "protonet-omniglot", "--device", "cuda"]) == 2
    assert "--device: device 'cuda'" in capsys.readouterr().err


def test_broken_pipe_exits_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    os.close(r)  # the reader went away, as `metashot data verify --json | head` does after its lines
    out = io.TextIOWrapper(io.BufferedWriter(io.FileIO(w, "w")))
    monkeypatch.setattr(sys, "stdout", out)
    try:
        assert main(["data", "verify", "--json", "--root", str(tmp_path)]) == 1
        out.flush()  # what the interpreter does at exit: must not raise BrokenPipeError
    finally:
        monkeypatch.undo()
        out.close()


def _checkpoint(folder: Path, meta: object) -> Path:
    folder.mkdir()
    save_file({"x": torch.zeros(1)}, str(folder / "weights.safetensors"))
    if isinstance(meta, dict):
        meta["weights_sha256"] = hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()
    (folder / "config.json").write_text(json.dumps(meta))
    return folder


def test_config_json_that_is_not_an_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = _checkpoint(tmp_path / "ck", [1, 2])
    assert main(["eval", str(ck)]) == 2
    err = capsys.readouterr().err
    assert str(ck / "config.json") in err and "not an object" in err


def test_missing_config_keys_name_the_file_and_the_key(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ck = _checkpoint(tmp_path / "ck", {"format": "metashot-checkpoint-1", "config": {"data": {}}})
    assert main(["eval", str(ck)]) == 2
    err = capsys.readouterr().err
    assert str(ck / "config.json") in err and "'config.model'" in err
    from metashot.evaluate import config_sections

    with pytest.raises(ValueError, match=r"ck.*lacks 'eval', 'data.dataset'"):
        config_sections({"config": {"model": {}, "data": {"test_split": "test"}}}, "ck")


def test_bad_run_config_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text('{"name": "x", ')
    assert main(["train", "--resume", str(run)]) == 2
    assert f"{run / 'config.yaml'}: not valid JSON" in capsys.readouterr().err
    assert main(["rl", "train", "--resume", str(run)]) == 2
    assert f"{run / 'config.yaml'}: not valid JSON" in capsys.readouterr().err


def _tiny_trainer(tmp_path: Path, learner=None, validate=None, progress=False, **train):  # type: ignore[no-untyped-def]
    from metashot.algorithms.protonet import ProtoNet
    from metashot.config import Config
    from metashot.data.episodes import EpisodeSampler
    from metashot.data.store import ClassStore
    from metashot.nn.backbones import build_backbone
    from metashot.train import Trainer

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12 * 6, 1, 8, 8), generator=g, dtype=torch.uint8)
    store = ClassStore(images, np.arange(13) * 6, [f"c{i}" for i in range(12)], {"name": "tiny"})
    torch.manual_seed(0)
    learner = learner or ProtoNet(build_backbone("conv4", in_channels=1, hidden=4, out_channels=4, depth=2))
    base = {"steps": 4, "lr": 1e-2, "lr_schedule": "constant", "log_every": 2, "seed": 0}
    base.update(train)
    cfg = Config.from_dict(
        {"name": "tiny", "episodes": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2}, "train": base})
    sampler = EpisodeSampler(store, 3, 1, 2, seed=0, tasks_per_batch=2)
    return Trainer(learner, sampler, cfg, validate, out_dir=tmp_path, progress=progress)


def test_load_state_reports_unreadable_weights_as_a_checkpoint_error(tmp_path: Path) -> None:
    from metashot.checkpoint import CheckpointError

    tr = _tiny_trainer(tmp_path)
    tr.train_step()
    tr.save("last", with_state=True)
    last = tmp_path / "last"
    w = last / "weights.safetensors"
    w.write_bytes(b"not a safetensors file")
    meta = json.loads((last / "config.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()  # passes the digest check
    (last / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="cannot be read"):
        tr.load_state(last)


# --- 12: misleading messages ----------------------------------------------------------------------


def test_predict_accepts_a_single_image_as_the_query(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sup = tmp_path / "support"
    for c in ("alpha", "beta"):
        (sup / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(sup / c / "0.png")
    one = tmp_path / "one.png"
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(one)
    out = tmp_path / "pred.csv"
    assert main(["predict", "protonet-omniglot", "--support", str(sup), "--query", str(one),
                 "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and rows[0]["label"] in {"alpha", "beta"}


def test_text_sentence_file_that_is_a_folder(tmp_path: Path) -> None:
    from metashot.text.glue import read_labelled, read_sentences

    for read in (read_sentences, read_labelled):
        with pytest.raises(ValueError, match="is a folder"):
            read(tmp_path)


def test_error_prefix_is_printed_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lake"]) == 2
    assert capsys.readouterr().err.count("metashot lake") == 1
    assert main(["rl", "eval"]) == 2
    assert capsys.readouterr().err.count("metashot rl") == 1


def test_text_extra_hint_works_outside_a_clone() -> None:
    from metashot.text.encoder import EXTRA_HINT

    assert "pip install 'metashot[text]'" in EXTRA_HINT and "in a clone" in EXTRA_HINT


# --- 13: what a newcomer looks for ----------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from metashot import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"metashot {__version__}"


def test_models_lists_every_bundled_model_with_its_card(capsys: pytest.CaptureFixture[str]) -> None:
    from metashot.checkpoint import bundled_names

    names = bundled_names()
    assert {"photos", "protonet-omniglot", "maml-trpo-navigation2d"} <= set(names)
    from metashot.classifier import bundled_models

    assert main(["models"]) == 0  # a table within 100 columns, long figures on indented lines
    table = capsys.readouterr().out.splitlines()
    assert max(len(ln) for ln in table) <= 100, table
    assert [ln.split()[0] for ln in table[1:] if not ln.startswith(" ")] == names
    assert main(["models", "--long"]) == 0  # every field of every card, wrapped within 100 columns
    out = capsys.readouterr().out
    assert max(len(ln) for ln in out.splitlines()) <= 100
    flat = " ".join(out.split())
    for row in bundled_models():
        fields = row["card"].split(" | ")
        assert len(fields) == 4, f"{row['name']}: domain | input | training | figure, got {row['card']}"
        for field in fields:
            assert " ".join(field.split()) in flat, (row["name"], field)
    assert "98.01 %" in flat and "-3.02" in flat
    assert main(["models", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == names


def test_every_eval_flag_has_help_with_its_default() -> None:
    e = _subparser("eval")
    for act in e._actions:
        if not act.option_strings or "--help" in act.option_strings:
            continue
        assert act.help, f"{act.option_strings} has no help"
        if act.nargs != 0:  # an option with a value says what it defaults to
            assert "default" in act.help, f"{act.option_strings}: {act.help}"


def test_train_commands_share_the_set_and_quiet_help() -> None:
    parsers = [_subparser("train"), _subparser("sinusoid", "train"), _subparser("rl", "train")]
    for opt in ("--set", "--quiet"):
        helps = {_option_help(p, opt) for p in parsers}
        assert len(helps) == 1 and None not in helps, helps


def test_quiet_flag_sets_metashot_quiet_for_the_command(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import metashot.train
    from metashot._env import quiet

    monkeypatch.delenv("METASHOT_QUIET", raising=False)
    seen = []
    monkeypatch.setattr(metashot.train, "train_from_config",
                        lambda cfg, progress, resume: seen.append((quiet(), progress)) or {"steps": 0})
    assert main(["train", DEMO, "--quiet"]) == 0
    assert seen == [(True, False)] and not quiet() and "METASHOT_QUIET" not in os.environ
    monkeypatch.setenv("METASHOT_QUIET", "0")
    assert not quiet()


def test_dataset_decode_bars_honour_quiet() -> None:
    for mod in ("omniglot", "flowers102", "mini_imagenet", "folder"):
        src = Path(importlib.import_module(f"metashot.data.{mod}").__file__).read_text()
        calls = [n for n in ast.walk(ast.parse(src))
                 if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "tqdm"]
        assert calls, mod
        for c in calls:
            disable = [k for k in c.keywords if k.arg == "disable"]
            assert disable and "quiet()" in ast.unparse(disable[0].value), f"{mod}.py: {ast.unparse(c)}"


def test_validation_is_shown_on_the_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tr = _tiny_trainer(tmp_path, validate=lambda lrn: {"acc": 50.0, "ci95": 1.0}, progress=True, val_every=2)
    tr.fit()
    assert "validating..." in capsys.readouterr().err


def test_training_accuracy_is_logged_in_percent(tmp_path: Path) -> None:
    from metashot.algorithms.protonet import ProtoNet
    from metashot.nn.backbones import build_backbone
    from metashot.plot import train_acc_percent

    class Half(ProtoNet):
        def meta_loss(self, batch):  # type: ignore[no-untyped-def]
            loss, m = super().meta_loss(batch)
            return loss, dict(m, acc=0.5)

    torch.manual_seed(0)
    learner = Half(build_backbone("conv4", in_channels=1, hidden=4, out_channels=4, depth=2))
    _tiny_trainer(tmp_path, learner=learner).fit()
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    accs = [r["acc"] for r in recs if "acc" in r]
    assert accs and all(a == pytest.approx(50.0) for a in accs)
    # plots read new (percent) and old (fraction) logs alike
    assert train_acc_percent([{"acc": 50.0}, {"acc": 0.5}]) == [50.0, 0.5]
    assert train_acc_percent([{"acc": 0.25}, {"acc": 0.5}]) == [25.0, 50.0]
