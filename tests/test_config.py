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
