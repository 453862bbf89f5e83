import re
from pathlib import Path

import pytest

from metashot.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_config_parses():
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert configs
    import yaml

    from metashot.rl.train import load_rl_config

    rl = 0
    for p in configs:
        if "env" in (yaml.safe_load(p.read_text()) or {}):  # meta-RL presets (metashot rl train)
            cfg = load_rl_config(p)
            rl += 1
        else:
            cfg = load_config(p)
        assert cfg.name
    assert rl >= 3


def test_overrides_and_types(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ntrain: {steps: 10}\n")
    cfg = load_config(p, ["train.steps=20", "train.lr=0.5", "model.backbone_args={hidden: 8}"])
    assert cfg.train.steps == 20 and cfg.train.lr == 0.5 and cfg.model.backbone_args == {"hidden": 8}


def test_unknown_key_and_bad_type_are_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ntrain: {stepz: 10}\n")
    with pytest.raises(ValueError, match="stepz"):
        load_config(p)
    p.write_text("name: x\ntrain: {steps: ten}\n")
    with pytest.raises(ValueError, match="train.steps"):
        load_config(p)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_roundtrip_dict():
    cfg = Config()
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("override", "shown", "allowed"),
    [
        ("train.log_every=0", "0", "[1, inf)"),
        ("episodes.queries=0", "0", "[1, inf)"),
        ("eval.queries=0", "0", "[1, inf)"),
        ("train.steps=-5", "-5", "[0, inf) (0 = nothing to train)"),
        ("train.checkpoint_every=-1", "-1", "[0, inf) (0 = only at the end)"),
        ("train.val_every=-2", "-2", "[0, inf) (0 = off)"),
        ("data.image_size=0", "0", "[1, inf)"),
        ("train.grad_clip=.nan", "nan", "[0, inf) (0 or null = off)"),
        ("train.lr=-inf", "-inf", "[0, inf)"),
        ("train.lr=nan", "nan", "[0, inf)"),
        ("train.lr=inf", "inf", "[0, inf)"),
        ("train.momentum=1", "1.0", "[0, 1)"),
        ("episodes.within_group=1.5", "1.5", "[0, 1]"),
        ("train.target_val_acc=101", "101.0", "[0, 100] (percent)"),
        ("train.threads=0", "0", "[1, inf)"),
        ("train.seed=-1", "-1", "[0, inf)"),
    ],
)
def test_out_of_range_values_name_key_value_and_range(tmp_path, override, shown, allowed):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\n")
    key = override.split("=", 1)[0]
    pattern = re.escape(f"{p}.{key}: {shown} is out of range; expected ") + "an? (integer|number) in "
    with pytest.raises(ValueError, match=pattern + re.escape(allowed) + "$"):
        load_config(p, [override])


def test_zero_means_off_or_nothing_to_train(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\n")
    cfg = load_config(p, ["train.steps=0", "train.val_every=0", "train.checkpoint_every=0",
                          "train.early_stop_patience=0", "train.grad_clip=0", "train.grad_clip=null"])
    assert (cfg.train.steps, cfg.train.val_every, cfg.train.checkpoint_every) == (0, 0, 0)
    assert cfg.train.grad_clip is None


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-3", 1e-3), ("1E-3", 1e-3), (".5", 0.5), ("5.", 5.0), ("1_000", 1000.0), ("+2.5e+1", 25.0),
     ("'0.25'", 0.25), ("3", 3.0)],
)
def test_every_float_spelling_is_accepted(tmp_path, text, value):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\n")
    assert load_config(p, [f"train.lr={text}"]).train.lr == value
    p.write_text(f"name: x\ntrain: {{lr: {text}}}\n")  # the same spellings inside the YAML file
    assert load_config(p).train.lr == value


def test_numbers_only_and_integer_spellings(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\n")
    assert load_config(p, ["train.steps=1e4", "train.lr_step=2_000"]).train.steps == 10000
    with pytest.raises(ValueError, match=r"train\.lr_min: -inf is out of range"):  # a number, out of range
        load_config(p, ["train.lr_min=-inf"])
    for bad in ("train.lr=1e-3x", "train.lr=1..5", "train.lr=1.2.3", "train.lr=one"):
        with pytest.raises(ValueError, match=r"expected a number, got"):
            load_config(p, [bad])
    with pytest.raises(ValueError, match=r"train\.steps: expected an integer, got 1\.5"):
        load_config(p, ["train.steps=1.5e0"])
