"""Inference precision of pretrained backbones (issue 26 item 1): which dtype the frozen trunk runs in
(``precision``, ``$METASHOT_PRECISION``, what the CPU supports), and the bundled `photos` model in bfloat16
held to its float32 reference path on real photos."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metashot.nn import pretrained as P


class Spy(nn.Module):
    """A stand-in trunk that records whether it ran under CPU autocast, and computes a linear map
    (an op autocast runs in bfloat16)."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, 3, generator=torch.Generator().manual_seed(0)))
        self.num_features = dim
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return F.linear(x.mean((2, 3)), self.weight)


def spy_backbone(precision: str, trainable: bool = False) -> tuple[P.TimmBackbone, Spy]:
    bb = P.TimmBackbone("tf_efficientnet_lite0", pretrained=False, image_size=32, precision=precision,
                        trainable=trainable)
    spy = Spy()
    bb.trunk = spy
    return bb, spy


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU that computes bfloat16 natively, whatever this one does; no override in the environment."""
    monkeypatch.delenv("METASHOT_PRECISION", raising=False)
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: True)


X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_fp32_never_autocasts(bf16_cpu):
    bb, spy = spy_backbone("fp32")
    z = bb.features(X)
    assert spy.seen == [False] and z.dtype == torch.float32
    assert bb.compute_dtype() == torch.float32 and bb.trunk_signature.endswith("|float32")
    # not even inside a caller's bfloat16 autocast (a bf16 training loop around a frozen trunk): the
    # features of a frozen fp32 trunk are the reference ones its cache key promises
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z2 = bb.features(X)
    assert spy.seen == [False, False]
    torch.testing.assert_close(z2, z, rtol=0, atol=0)


def test_auto_follows_the_cpu_and_bf16_returns_float32(bf16_cpu, monkeypatch):
    bb, spy = spy_backbone("auto")
    z = bb.features(X)
    assert spy.seen == [True] and z.dtype == torch.float32 and bb.compute_dtype() == torch.bfloat16
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: False)  # a CPU without native bfloat16
    bb.features(X)
    assert spy.seen == [True, False] and bb.compute_dtype() == torch.float32


def test_a_trainable_trunk_runs_in_float32_under_its_callers_autocast(bf16_cpu):
    bb, spy = spy_backbone("bf16", trainable=True)
    bb.features(X)
    assert spy.seen == [False] and bb.compute_dtype() == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # train.precision bf16 still reaches it
        bb.features(X)
    assert spy.seen == [False, True]


@pytest.mark.parametrize(("env", "precision", "autocast"),
                         [("fp32", "bf16", False), ("fp32", "auto", False), ("bf16", "fp32", True),
                          ("auto", "fp32", True), (" BF16 ", "fp32", True)])
def test_metashot_precision_overrides_the_setting(bf16_cpu, monkeypatch, env, precision, autocast):
    monkeypatch.setenv("METASHOT_PRECISION", env)
    bb, spy = spy_backbone(precision)
    assert bb.features(X).dtype == torch.float32
    assert spy.seen == [autocast]
    assert bb.trunk_signature.endswith("|bfloat16" if autocast else "|float32")


def test_an_ensemble_in_bf16_normalises_its_members_in_float32(monkeypatch):
    """The members' bfloat16 features are power-transformed, normalised and concatenated in float32: the
    ensemble's feature has unit norm to float32 rounding (in bfloat16 it was off by 4e-4)."""
    monkeypatch.delenv("METASHOT_PRECISION", raising=False)
    torch.manual_seed(0)
    bb = P.TimmBackbone(["test_efficientnet_gn", "test_convnext"], pretrained=False, power=0.5, image_size=48,
                        precision="bf16")
    z = bb.features(torch.rand(4, 3, 48, 48))
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(4), rtol=0, atol=2e-6)


def test_a_bad_precision_is_one_line_naming_the_setting(monkeypatch):
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, onnx, got 'fp16'"):
        P.TimmBackbone("tf_efficientnet_lite0", pretrained=False, image_size=32, precision="fp16")
    bb, _ = spy_backbone("auto")
    monkeypatch.setenv("METASHOT_PRECISION", "half")
    with pytest.raises(ValueError,
                       match="METASHOT_PRECISION must be one of auto, fp32, bf16, onnx, got 'half'"):
        bb.features(X)


# --- the bundled `photos` model, float32 vs bfloat16, on real photos ------------------------------------

def _pinned_flowers(data_root: Path, classes: int = 5, per: int = 5) -> list[tuple[str, object]]:
    """(class, PIL image): the first ``per`` photos of the first ``classes`` Flowers-102 `val` classes
    (class numbers 1 mod 4), in a fixed order."""
    from PIL import Image

    path = data_root / "flowers102" / "flowers102_odd.zip"
    if not path.is_file():
        pytest.fail(f"test data missing: {path}. Set METASHOT_DATA to the shared data folder "
                    f"(../shared/data beside the repository)", pytrace=False)
    z = zipfile.ZipFile(path)
    by: dict[str, list[str]] = {}
    for n in sorted(z.namelist()):
        parts = n.split("/")
        if len(parts) == 3 and parts[2].endswith(".jpg") and int(parts[1][:3]) % 4 == 1:
            by.setdefault(parts[1], []).append(n)
    out = []
    for c in sorted(by)[:classes]:
        for n in by[c][:per]:
            im = Image.open(io.BytesIO(z.read(n)))
            im.load()
            out.append((c, im))
    return out


@pytest.fixture(scope="module")
def photos_and_flowers(data_root):
    import metashot

    return metashot.load("photos"), _pinned_flowers(data_root)


def under_precisions(photos_and_flowers, precisions: tuple[str, ...]) -> tuple[dict, dict, dict]:
    """The bundled backbone's features of the 25 pinned photos, and a 5-way 1-shot fit/predict's labels and
    probabilities on the other 20, in each precision (the shipped one restored after)."""
    from metashot.data.preprocess import preprocess, to_float

    clf, items = photos_and_flowers
    bb = clf.learner.backbone
    assert isinstance(bb, P.TimmBackbone)
    x = to_float(torch.from_numpy(np.stack([preprocess(im, clf.image_spec) for _, im in items])))
    labels = [c for c, _ in items]
    support, query = [i for i in range(25) if i % 5 == 0], [i for i in range(25) if i % 5]
    feats, preds, probas = {}, {}, {}
    shipped = bb.precision
    try:
        for precision in precisions:
            bb.precision = precision
            assert bb.compute_dtype() == (torch.bfloat16 if precision == "bf16" else torch.float32)
            assert bb.runs_onnx() == (precision == "onnx")
            with torch.inference_mode():
                feats[precision] = bb.features(x)
            clf.fit([items[i][1] for i in support], [labels[i] for i in support])
            preds[precision] = clf.predict([items[i][1] for i in query])
            probas[precision] = clf.predict_proba([items[i][1] for i in query])
    finally:
        bb.precision = shipped
    return feats, preds, probas


@pytest.mark.slow
def test_photos_in_bf16_matches_fp32_on_pinned_flowers(photos_and_flowers, monkeypatch):
    """25 photos (5 Flowers-102 val classes x 5): the bundled backbone's features in bfloat16 at cosine
    >= 0.999 to float32 for every photo, and a 5-way 1-shot fit/predict on 20 queries gives the same
    labels."""
    monkeypatch.delenv("METASHOT_PRECISION", raising=False)
    feats, preds, probas = under_precisions(photos_and_flowers, ("fp32", "bf16"))
    _, items = photos_and_flowers
    labels, query = [c for c, _ in items], [i for i in range(25) if i % 5]
    a, b = feats["fp32"], feats["bf16"]
    assert a.dtype == b.dtype == torch.float32 and not torch.equal(a, b)  # bf16 did run, and differently
    cos = F.cosine_similarity(a, b, dim=-1)
    assert cos.shape == (25,) and cos.min() >= 0.999, cos.tolist()
    assert list(preds["bf16"]) == list(preds["fp32"])
    # class probabilities move a little (temperature 10 on support-centred 1-shot prototypes amplifies the
    # rounding: 0.049 at most when written), never enough to change a label
    np.testing.assert_allclose(probas["bf16"], probas["fp32"], atol=0.1)
    # and the labels they agree on are mostly right (17 of 20 when written): not agreement on noise
    correct = sum(p == labels[i] for p, i in zip(preds["fp32"], query, strict=True))
    assert correct >= 14


# --- precision "onnx": the trunk run by ONNX Runtime (issue 26 item 1) ---------------------------------

@pytest.fixture
def onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METASHOT_CACHE", str(tmp_path))
    monkeypatch.delenv("METASHOT_PRECISION", raising=False)
    return tmp_path / "onnx"


def test_onnx_matches_the_float32_path_and_its_export_is_cached_and_verified(onnx_cache):
    """A tf_ EfficientNet (TensorFlow 'SAME' padding) exported for one input size: features equal to the
    PyTorch float32 path's to rounding; the export is kept, reused, and rebuilt when its file is damaged."""
    torch.manual_seed(0)
    bb = P.TimmBackbone("tf_efficientnet_lite0", pretrained=False, image_size=64, precision="onnx")
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert bb.runs_onnx(x) and bb.trunk_signature.endswith("|onnx-float32")
    z = bb.features(x)
    bb.precision = "fp32"
    ref = bb.features(x)
    assert not bb.runs_onnx(x) and bb.trunk_signature.endswith("|float32")
    torch.testing.assert_close(z, ref, rtol=1e-4, atol=1e-5)
    files = sorted(p.suffix for p in onnx_cache.iterdir())
    assert files == [".json", ".onnx"]
    onnx = next(onnx_cache.glob("*.onnx"))
    stamp = onnx.stat().st_mtime_ns
    bb2 = P.TimmBackbone("tf_efficientnet_lite0", pretrained=False, image_size=64, precision="onnx")
    bb2.load_state_dict(bb.state_dict())
    bb2.trunk.load_state_dict(bb.trunk.state_dict())
    torch.testing.assert_close(bb2.features(x), z, rtol=0, atol=0)
    assert onnx.stat().st_mtime_ns == stamp  # reused, not exported again
    onnx.write_bytes(onnx.read_bytes()[:-10])  # a damaged export
    bb3 = P.TimmBackbone("tf_efficientnet_lite0", pretrained=False, image_size=64, precision="onnx")
    bb3.trunk.load_state_dict(bb.trunk.state_dict())
    with pytest.warns(UserWarning,
                      match=r"ONNX cache .*\.onnx failed verification .*SHA-256.*exporting it again"):
        z3 = bb3.features(x)
    torch.testing.assert_close(z3, z, rtol=0, atol=0)
    # other input sizes get their own export; non-square inputs take the PyTorch path
    assert bb3.features(torch.rand(1, 3, 48, 48)).shape == (1, bb3.feature_dim)
    assert len(list(onnx_cache.glob("*.onnx"))) == 2
    assert not bb3.runs_onnx(torch.rand(1, 3, 48, 64))


def test_onnx_is_forced_by_the_environment_and_never_for_a_trainable_trunk(onnx_cache, monkeypatch):
    monkeypatch.setenv("METASHOT_PRECISION", "onnx")
    bb, spy = spy_backbone("fp32")
    assert bb.runs_onnx(X) and bb.compute_dtype() == torch.float32
    bb, spy = spy_backbone("onnx", trainable=True)
    assert not bb.runs_onnx(X)
    bb.features(X)
    assert spy.seen == [False]  # the PyTorch float32 path


def test_onnx_without_onnxruntime_is_one_line(onnx_cache, monkeypatch):
    from metashot.nn import onnx_trunk

    monkeypatch.setattr(onnx_trunk, "onnxruntime_available", lambda: False)
    bb = P.TimmBackbone("tf_efficientnet_lite0", pretrained=False, image_size=32, precision="onnx")
    with pytest.raises(ValueError, match=r"precision 'onnx' needs ONNX Runtime: pip install"):
        bb.features(X)


@pytest.mark.slow
def test_photos_through_onnx_runtime_matches_fp32_on_pinned_flowers(photos_and_flowers, monkeypatch):
    """The bundled backbone through ONNX Runtime: features at cosine >= 0.99999 to PyTorch float32 for all
    25 pinned photos, the same labels and the same probabilities to 1e-3 in a 5-way 1-shot fit/predict."""
    monkeypatch.delenv("METASHOT_PRECISION", raising=False)
    feats, preds, probas = under_precisions(photos_and_flowers, ("fp32", "onnx"))
    cos = F.cosine_similarity(feats["fp32"], feats["onnx"], dim=-1)
    assert not torch.equal(feats["fp32"], feats["onnx"]) and cos.min() >= 0.99999, cos.tolist()
    assert list(preds["onnx"]) == list(preds["fp32"])
    np.testing.assert_allclose(probas["onnx"], probas["fp32"], atol=1e-3)


def test_onnx_runs_large_batches_in_chunks_with_the_same_answers(onnx_cache, monkeypatch):
    """The session sees at most OrtMember.chunk images at a time (bounded memory); the features of a batch
    are those of its images one chunk at a time, in order."""
    from metashot.nn import onnx_trunk

    torch.manual_seed(0)
    bb = P.TimmBackbone("tf_efficientnet_lite0", pretrained=False, image_size=32, precision="onnx")
    x = torch.rand(7, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    whole = bb.features(x)
    member = bb._onnx_trunk(32)
    seen: list[int] = []
    session = member.session

    class Spy:
        def run(self, outputs, feed):
            seen.append(len(feed["x"]))
            return session.run(outputs, feed)

    member.session = Spy()
    monkeypatch.setattr(onnx_trunk.OrtMember, "chunk", 3)
    torch.testing.assert_close(bb.features(x), whole, rtol=1e-5, atol=1e-6)
    assert seen == [3, 3, 1]
    assert bb.features(x[:0]).shape == (0, bb.feature_dim)  # an empty batch: no session call, no error


def test_onnx_with_an_unwritable_cache_exports_for_the_process_and_says_so(onnx_cache):
    onnx_cache.parent.mkdir(parents=True, exist_ok=True)
    onnx_cache.write_text("a file where the cache folder should be")
    torch.manual_seed(0)
    bb = P.TimmBackbone("tf_efficientnet_lite0", pretrained=False, image_size=32, precision="onnx")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with pytest.warns(UserWarning, match=r"cannot write the ONNX cache .*onnx .*for this process only\. Set "
                                         r"METASHOT_CACHE to a writable folder"):
        z = bb.features(x)
    bb.precision = "fp32"
    torch.testing.assert_close(z, bb.features(x), rtol=1e-4, atol=1e-5)
    assert onnx_cache.read_text() == "a file where the cache folder should be"  # nothing deleted


def test_onnx_export_failure_is_one_line_naming_the_model_and_the_way_around(onnx_cache, monkeypatch):
    def unsupported(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator foo\nlong trace")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    bb = P.TimmBackbone("tf_efficientnet_lite0", pretrained=False, image_size=32, precision="onnx")
    with pytest.raises(ValueError, match=r"^cannot export tf_efficientnet_lite0 to ONNX \(RuntimeError: "
                                         r"Unsupported: ONNX export of operator foo\); run it with PyTorch: "
                                         r"precision auto \(or METASHOT_PRECISION=auto\)$"):
        bb.features(X)
    assert not onnx_cache.exists() or not any(onnx_cache.iterdir())  # no half-written file left


def test_a_pickled_or_copied_onnx_backbone_rebuilds_its_sessions(onnx_cache):
    import copy
    import pickle

    torch.manual_seed(0)
    bb = P.TimmBackbone("tf_efficientnet_lite0", pretrained=False, image_size=32, precision="onnx")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    z = bb.features(x)
    assert "_ort_trunks" in bb.__dict__
    for other in (pickle.loads(pickle.dumps(bb)), copy.deepcopy(bb)):
        assert "_ort_trunks" not in other.__dict__
        torch.testing.assert_close(other.features(x), z, rtol=0, atol=0)
