"""`metashot train` with a trainable timm backbone: the stores follow the backbone's own input pipeline, and
the checkpoint records it, so `metashot eval` and fit/predict apply the same crop and size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from metashot.cli import main

pytestmark = pytest.mark.slow


def test_train_a_timm_backbone_on_a_photo_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("METASHOT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(3):
            d = tmp_path / split / f"class{c}"
            d.mkdir(parents=True)
            base = rng.integers(0, 256, 3)
            for i in range(4):
                img = np.clip(base + rng.normal(0, 30, (40, 60, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
name: timm-tiny
data: {{dataset: folder, root: {tmp_path}, train_split: train, val_split: val, test_split: val}}
model:
  algorithm: protonet
  backbone: timm
  backbone_args: {{model: test_efficientnet, pretrained: false, trainable: true, image_size: 48}}
episodes: {{ways: 3, shots: 1, queries: 2, meta_batch: 1}}
train: {{steps: 2, lr: 0.001, seed: 0, threads: 1, val_every: 2, val_episodes: 4,
        out_dir: {tmp_path / 'run'}}}
eval: {{ways: 3, shots: 1, queries: 2, episodes: 4, seed: 1, meta_batch: 2}}
""")
    assert main(["train", str(cfg), "--quiet"]) == 0
    meta = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    spec = meta["image_spec"]
    assert spec["size"] == 48 and spec["crop_pct"] == 0.95 and spec["resize_filter"] == "bicubic"
    assert "external_weights" not in meta  # a trainable trunk is saved whole
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["episodes"] == 4 and 0 <= res["acc"] <= 100
