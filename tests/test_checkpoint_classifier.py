import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import metashot
from metashot.checkpoint import CheckpointError, build_learner, load_checkpoint, save_checkpoint
from metashot.classifier import NotFittedError
from metashot.config import Config
from metashot.data.omniglot import OMNIGLOT_SPEC

SPEC = OMNIGLOT_SPEC.to_dict()


def _tiny(tmp_path, name="ck"):
    cfg = Config()
    cfg.model.backbone_args = {"hidden": 8, "out_channels": 8}
    torch.manual_seed(0)
    learner = build_learner(dict(cfg.model.__dict__))
    path = save_checkpoint(tmp_path / name, learner, cfg.to_dict(), extra={"image_spec": SPEC})
    return learner, path


def test_roundtrip_exact(tmp_path):
    learner, path = _tiny(tmp_path)
    loaded, meta = load_checkpoint(path)
    for (k, a), (k2, b) in zip(learner.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert meta["algorithm"] == "protonet" and meta["image_spec"] == SPEC
    assert not any(p.suffix in (".pt", ".pth", ".pkl") for p in path.iterdir())


def test_tampered_truncated_and_mismatched_checkpoints(tmp_path):
    _, path = _tiny(tmp_path)
    w = path / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)
    w.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="modified or truncated"):
        load_checkpoint(path)
    # weights consistent with their hash but not with the model described in config.json
    _, path2 = _tiny(tmp_path, "ck2")
    meta = json.loads((path2 / "config.json").read_text())
    meta["config"]["model"]["backbone_args"] = {"hidden": 16, "out_channels": 8}
    (path2 / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match the model"):
        load_checkpoint(path2)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing-here")


def _glyph(kind: int, shift: int, size: int = 60) -> Image.Image:
    """Black-on-white drawings of a few distinct shapes (like Omniglot's polarity), slightly shifted."""
    a = np.full((size, size), 255, np.uint8)
    s = shift
    if kind == 0:
        a[10 + s : 50 + s, 28:32] = 0  # vertical bar
    elif kind == 1:
        a[28:32, 10 + s : 50 + s] = 0  # horizontal bar
    else:
        a[10 + s : 20 + s, 10:50] = 0
        a[40:50, 10 + s : 50 + s] = 0  # two bars
    return Image.fromarray(a)


def test_fit_predict_on_raw_images_any_labels(tmp_path):
    _, path = _tiny(tmp_path)
    clf = metashot.load(path)
    with pytest.raises(NotFittedError):
        clf.predict([_glyph(0, 0)])
    labels = ["bar|", ("tuple", 1), 7]
    support = [_glyph(k, 0) for k in range(3)]
    clf.fit(support, labels)
    assert list(clf.classes_) == ["bar|", ("tuple", 1), 7]  # unorderable mix keeps first-appearance order
    # queries as a PIL image, a file path and a uint8 RGB array of another size
    p = tmp_path / "q.png"
    _glyph(1, 0).save(p)
    rgb = np.stack([np.asarray(_glyph(2, 0).resize((90, 90)))] * 3, -1)
    pred = clf.predict([_glyph(0, 0), str(p), rgb])
    assert list(pred) == ["bar|", ("tuple", 1), 7]
    proba = clf.predict_proba([_glyph(0, 0)])
    assert proba.shape == (1, 3) and np.isclose(proba.sum(), 1.0)
    # a new support set replaces the previous one
    clf.fit(support[:2], ["a", "b"])
    assert list(clf.classes_) == ["a", "b"] and clf.predict_proba([_glyph(0, 0)]).shape == (1, 2)


def test_fit_bad_input(tmp_path):
    _, path = _tiny(tmp_path)
    clf = metashot.load(path)
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        clf.fit([_glyph(0, 0), _glyph(1, 0)], ["a"])
    with pytest.raises(ValueError, match="at least 2 classes"):
        clf.fit([_glyph(0, 0)], ["a"])
    with pytest.raises(FileNotFoundError):
        clf.fit([tmp_path / "nope.png", _glyph(0, 0)], ["a", "b"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        clf.fit([bad, _glyph(0, 0)], ["a", "b"])
    with pytest.raises(ValueError, match="uint8"):
        clf.fit([np.zeros((5, 5), np.float32), _glyph(0, 0)], ["a", "b"])


def test_score_repr_and_bool_arrays(tmp_path):
    _, path = _tiny(tmp_path)
    clf = metashot.load(path)
    assert "not fitted" in repr(clf) and str(path) in repr(clf) and "1x28x28 inverted" in repr(clf)
    support = [_glyph(k, 0) for k in range(3)]
    clf.fit(support, ["v", "h", "two"])
    assert "classes_=['h', 'two', 'v'] (3)" in repr(clf) and "temperature" not in repr(clf)
    assert clf.score(support, ["v", "h", "two"]) == 1.0
    assert clf.score(support, ["h", "h", "h"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        clf.score(support, ["v", "h"])
    # np.array(Image.open(png)) of a 1-bit PNG is a bool array: True is white
    as_bool = [np.asarray(g) > 127 for g in support]
    assert np.allclose(clf.predict_proba(as_bool), clf.predict_proba(support))


def test_temperature_from_config_divides_scores_only(tmp_path):
    import shutil

    _, plain = _tiny(tmp_path)
    hot = Path(shutil.copytree(plain, tmp_path / "hot"))
    cfg = json.loads((hot / "config.json").read_text())
    # a key of config.json only: the weights and their SHA-256 stay as they are
    (hot / "config.json").write_text(json.dumps(dict(cfg, temperature=4.0)))
    support = [_glyph(k, 0) for k in range(3)]
    queries = [_glyph(k, 3) for k in range(3)] * 2
    a = metashot.load(plain).fit(support, [0, 1, 2])
    b = metashot.load(hot).fit(support, [0, 1, 2])
    assert b.temperature == 4.0 and "temperature=4" in repr(b)
    assert np.allclose(b.decision_function(queries), a.decision_function(queries) / 4.0, atol=1e-5)
    pa, pb = a.predict_proba(queries), b.predict_proba(queries)
    assert (pa.argmax(1) == pb.argmax(1)).all() and (pb.max(1) <= pa.max(1) + 1e-6).all()
    assert list(a.predict(queries)) == list(b.predict(queries))
    cfg = json.loads((hot / "config.json").read_text())
    for bad in (0, -1.0, "2", None, True):
        cfg["temperature"] = bad
        (hot / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match="temperature"):
            metashot.load(hot)


def test_checkpoint_folders_are_readable_by_every_user(tmp_path):
    import stat

    from torch import nn as _nn

    from metashot.algorithms.protonet import ProtoNet
    from metashot.checkpoint import save_checkpoint

    ck = save_checkpoint(tmp_path / "ck", ProtoNet(_nn.Flatten()), {"model": {}})
    assert stat.S_IMODE(ck.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o044 for f in ck.iterdir())
