"""metashot.lite: a saved photo classifier answered without torch gives the full classifier's answers, never
imports torch, falls back (or says why in one line) when its networks are not cached, and hands everything
else to the full classifier."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import metashot
from metashot.algorithms.simpleshot import SimpleShot
from metashot.checkpoint_files import CheckpointError
from metashot.lite import open_lite

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _runtime(head: str = "soft_kmeans", steps: int = 2, **kw) -> dict:
    rt = {"kind": "onnx-simpleshot", "version": 1, "size": 8,
          "members": [{"file": "a.onnx", "sha256": "0" * 64, "num_features": 6}], "ensemble": False,
          "power": None, "backbone_l2norm": False, "mean": [0.5] * 3, "std": [0.5] * 3, "l2norm": True,
          "centre": "support", "head": head,
          "head_args": {"scale": 7.0, **({"steps": steps} if head == "soft_kmeans" else {})},
          "inductive_scale": 10.0, "transductive": True, "unknown_threshold": 0.2,
          "calibration_temperature": 1.0}
    rt.update(kw)
    return rt


@pytest.mark.parametrize("head", ["ncm", "soft_kmeans"])
@pytest.mark.parametrize("transductive", [None, False])
def test_numpy_head_arithmetic_matches_simpleshot(head: str, transductive: bool | None) -> None:
    """On random L2-normalised embeddings, the NumPy scores, known-class scores and unknown rule equal
    SimpleShot's torch ones (HeadPredictor.scores_embedded), a single photo included."""
    from metashot.algorithms.simpleshot import HeadPredictor
    from metashot.lite_heads import scores_embedded

    g = torch.Generator().manual_seed(3)
    zs = nn.functional.normalize(torch.randn(12, 6, generator=g), dim=-1)
    ys = torch.arange(4).repeat(3)
    zq = nn.functional.normalize(torch.randn(9, 6, generator=g), dim=-1)
    args = {"steps": 2, "scale": 7.0} if head == "soft_kmeans" else {"scale": 7.0}
    pred = HeadPredictor(SimpleShot(nn.Identity(), centre="support", temperature=10.0, head=head,
                                    head_args=args), zs, ys)
    rt = _runtime(head)
    for q in (zq, zq[:1]):
        for threshold in (None, 0.4):
            want, want_known = pred.scores_embedded(q, transductive, threshold)
            got, known = scores_embedded(zs.numpy(), ys.numpy(), q.numpy(), rt, transductive, threshold)
            np.testing.assert_allclose(got, want.numpy(), atol=2e-5)
            np.testing.assert_allclose(known, want_known.numpy(), atol=2e-6)
    _, known = scores_embedded(zs.numpy(), ys.numpy(), zq.numpy(), rt, None, 0.4)
    assert 0 < (known < 0.4).sum() < len(zq)  # the threshold splits this batch: both branches ran


def test_malformed_runtime_records_turn_the_lite_path_off(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder whose runtime record is missing or malformed is not answered by the lite path; the reason
    names what is wrong (the full path then loads it)."""
    from safetensors.numpy import save_file

    from metashot.digest import file_digest

    save_file({"embeddings": np.zeros((2, 6), np.float32), "labels": np.array([0, 1])},
              str(tmp_path / "support.safetensors"))
    base = {"format": "metashot-fitted-1", "model": {"name": "photos"}, "classes": ["a", "b"],
            "support": {"file": "support.safetensors",
                        "sha256": file_digest(tmp_path / "support.safetensors")},
            "image_spec": {"size": 8, "channels": 3}}
    two = [{"file": f"{k}.onnx", "sha256": "0", "num_features": 3} for k in "ab"]
    for rt, says in ((None, "no runtime record"), (_runtime(head="tim"), "not one the lite path runs"),
                     (_runtime(members=[{"file": "../x.onnx", "sha256": "0", "num_features": 6}]),
                      "malformed"), (_runtime(power=3), "power"),
                     (_runtime(calibration_temperature=0), "calibration_temperature"),
                     (_runtime(calibration_temperature=float("inf")), "calibration_temperature"),
                     (_runtime(inductive_scale=-10.0), "inductive_scale"),
                     (_runtime(unknown_threshold=float("nan")), "unknown_threshold"),
                     (_runtime(head_args={"scale": 7.0, "steps": True}), "head_args"),
                     (_runtime(members=two), "do not match its 'ensemble'"),
                     (_runtime(size=224), "is not its networks'"),
                     (_runtime(), "is missing or does not match the SHA-256")):
        (tmp_path / "classifier.json").write_text(json.dumps(dict(base, runtime=rt)))
        clf, why = open_lite(tmp_path)
        assert clf is None and says in why and "\n" not in why, why
        with pytest.raises(ValueError, match="lite=True") as e:
            metashot.load(tmp_path, lite=True)
        assert "\n" not in str(e.value)
    # networks present and verified, but a class without a photo (or a single class): not the lite path
    monkeypatch.setenv("METASHOT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "onnx").mkdir(parents=True)
    onnx = tmp_path / "cache" / "onnx" / "a.onnx"
    onnx.write_bytes(b"not read before the checks")
    net = [{"file": "a.onnx", "sha256": file_digest(onnx), "num_features": 6}]
    (tmp_path / "classifier.json").write_text(json.dumps(dict(base, runtime=_runtime(members=net),
                                                              classes=["a", "b", "c"])))
    assert "at least 2 classes" in open_lite(tmp_path)[1]
    (tmp_path / "classifier.json").write_text(json.dumps(dict(base, runtime=_runtime(), image_spec={"x": 1})))
    assert "image preprocessing is unreadable" in open_lite(tmp_path)[1]
    sup = dict(base["support"], file="../support.safetensors")  # outside the folder: refused on both paths
    (tmp_path / "classifier.json").write_text(json.dumps(dict(base, runtime=_runtime(), support=sup)))
    with pytest.raises(CheckpointError, match="plain name inside the folder"):
        open_lite(tmp_path)


def test_the_lite_modules_do_not_import_torch() -> None:
    code = ("import sys, metashot, metashot.loader, metashot.lite, metashot.fitted_files, metashot.cli, "
            "metashot.data.preprocess, metashot.data.decode, metashot.predict_folder; metashot.load; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# -- the bundled photos model on real photos ----------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict:
    """5 Flowers-102 test classes x 3 support photos, saved; 4 more photos of each as queries (files) and 3
    photos of 3 other classes (for 'unknown')."""
    from tests.test_bundled_photos import _flowers

    if not (data_root / "flowers102" / "flowers102_odd.zip").is_file():
        pytest.fail(f"test data missing: {data_root}/flowers102/flowers102_odd.zip", pytrace=False)
    work = tmp_path_factory.mktemp("lite")
    flowers = _flowers(data_root, classes=8, per=7)
    sx, sy, queries, extra = [], [], [], []
    for i, (c, ims) in enumerate(flowers.items()):
        for j, im in enumerate(ims):
            f = work / f"{c}_{j}.jpg"
            im.convert("RGB").save(f, quality=92)
            if i < 5:
                (sx if j < 3 else queries).append(str(f))
                if j < 3:
                    sy.append(c)
            elif j < 3:
                extra.append((c, str(f)))
    clf = metashot.load("photos").fit(sx, sy)
    folder = clf.save(work / "clf")
    return {"folder": folder, "queries": queries, "extra": extra, "classes": sorted(set(sy))}


@pytest.mark.slow
def test_lite_answers_as_the_full_classifier(saved: dict) -> None:
    lite = metashot.load(saved["folder"])
    full = metashot.load(saved["folder"], lite=False)
    assert type(lite).__name__ == "LiteClassifier" and type(full).__name__ == "FewShotClassifier"
    assert list(lite.classes_) == list(full.classes_) == saved["classes"]
    assert lite.n_features_in_ == full.n_features_in_ == 2560
    q = saved["queries"] + [f for _, f in saved["extra"]]
    for kw in ({}, {"transductive": False}, {"unknown": True}, {"unknown": True, "transductive": False}):
        got_labels, got = lite.classify(q, **kw)
        want_labels, want = full.classify(q, **kw)
        assert got_labels.tolist() == want_labels.tolist(), kw
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert "unknown" in got_labels.tolist()  # photos of other classes are caught, as by the full path
    np.testing.assert_allclose(lite.decision_function(q[:1]), full.decision_function(q[:1]), atol=1e-4)
    from PIL import Image

    ims = [Image.open(f) for f in q[:5]]
    np.testing.assert_allclose(lite.predict_proba(ims), full.predict_proba(ims), atol=1e-5)
    truth = [Path(f).name.rsplit("_", 1)[0] for f in saved["queries"]]
    assert lite.score(saved["queries"], truth) == full.score(saved["queries"], truth) >= 0.9
    assert getattr(lite, "_repr_html_", None) is None and not hasattr(lite, "_ipython_canary_method_")
    assert type(lite).__name__ == "LiteClassifier" and lite._full is None  # nothing above needed torch
    assert lite.is_lite


@pytest.mark.slow
def test_lite_does_not_import_torch_in_a_new_process(saved: dict) -> None:
    q = saved["queries"][0]
    code = (f"import sys, metashot; clf = metashot.load({str(saved['folder'])!r}); "
            f"print(clf.predict([{q!r}])[0], type(clf).__name__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [Path(q).name.rsplit("_", 1)[0], "LiteClassifier", "False"], out.stderr


@pytest.mark.slow
def test_lite_needs_its_verified_networks(saved: dict, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache without the recorded ONNX files, or with a damaged one, turns the lite path off (lite=True says
    so in one line; the default loads the full classifier, which exports them again); so do METASHOT_LITE=0
    and a forced PyTorch precision. A damaged support file is the full path's one-line error."""
    from metashot._env import cache_dir

    rt = json.loads((saved["folder"] / "classifier.json").read_text())["runtime"]
    cache = tmp_path / "cache"
    (cache / "onnx").mkdir(parents=True)
    monkeypatch.setenv("METASHOT_CACHE", str(cache))
    with pytest.raises(ValueError, match="is missing or does not match the SHA-256") as e:
        metashot.load(saved["folder"], lite=True)
    assert "\n" not in str(e.value)
    monkeypatch.delenv("METASHOT_CACHE")
    for m in rt["members"]:
        shutil.copyfile(cache_dir("onnx") / m["file"], cache / "onnx" / m["file"])
    monkeypatch.setenv("METASHOT_CACHE", str(cache))
    assert type(metashot.load(saved["folder"])).__name__ == "LiteClassifier"
    damaged = cache / "onnx" / rt["members"][1]["file"]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert open_lite(saved["folder"])[0] is None
    assert "does not match" in open_lite(saved["folder"])[1]
    monkeypatch.delenv("METASHOT_CACHE")
    for env, value in (("METASHOT_LITE", "0"), ("METASHOT_PRECISION", "bf16")):
        monkeypatch.setenv(env, value)
        clf, why = open_lite(saved["folder"])
        assert clf is None and f"{env}={value}" in why
        monkeypatch.delenv(env)
    broken = tmp_path / "broken"
    shutil.copytree(saved["folder"], broken)
    (broken / "support.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        metashot.load(broken)


@pytest.mark.slow
def test_lite_hands_everything_else_to_the_full_classifier(saved: dict, tmp_path: Path) -> None:
    """partial_fit, save, attributes it does not hold and pickling load the full classifier once; from then
    on every answer is the full classifier's (nothing stale)."""
    lite = metashot.load(saved["folder"])
    c, f = saved["extra"][0]
    assert lite.predict([f])[0] != c  # a class it has not seen yet
    lite.partial_fit([f2 for c2, f2 in saved["extra"] if c2 == c], [c] * 3)
    assert type(lite.full()).__name__ == "FewShotClassifier" and c in list(lite.classes_)
    assert lite.predict([f])[0] == c and lite.support_embeddings_.shape == (18, 2560)
    lite.batch_size = 8
    assert lite.full().batch_size == 8 and repr(lite).startswith("FewShotClassifier(") and not lite.is_lite
    twin = copy.copy(lite)
    twin.batch_size = 2
    assert type(twin).__name__ == "FewShotClassifier" and lite.batch_size == 8  # a copy, not the same object
    again = pickle.loads(pickle.dumps(lite))
    assert type(again).__name__ == "FewShotClassifier" and again.predict([f])[0] == c
    from sklearn.base import clone

    fresh = clone(metashot.load(saved["folder"]))  # clone: the full classifier's parameters, unfitted
    assert type(fresh).__name__ == "FewShotClassifier" and "classes_" not in fresh.__dict__
    out = lite.save(tmp_path / "grown")
    reloaded = metashot.load(out)
    assert type(reloaded).__name__ == "LiteClassifier" and len(reloaded.classes_) == 6
    assert reloaded.predict([f])[0] == c


def test_unknown_needs_a_threshold_and_no_class_named_unknown() -> None:
    """predict(..., unknown=True)'s two one-line errors, shared by the full and the lite path."""
    from metashot.lite_heads import check_unknown

    with pytest.raises(ValueError, match="has no calibrated 'unknown' threshold") as e:
        check_unknown(None, ["a", "b"], "protonet-omniglot")
    assert "protonet-omniglot" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="a support class is named 'unknown'"):
        check_unknown(0.1, ["a", "unknown"], "photos")
    check_unknown(0.1, ["a", "b"], "photos")


@pytest.mark.slow
def test_cli_predict_of_a_saved_classifier_runs_without_torch(saved: dict, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`metashot predict FOLDER --query DIR` answers through the lite path, in a new process without torch
    (with --threshold too), with the full path's rows (METASHOT_LITE=0) with no flag, --unknown and
    --threshold."""
    from metashot.cli import main

    query = tmp_path / "query"
    query.mkdir()
    for f in saved["queries"][::2] + [f for _, f in saved["extra"]][:2]:
        shutil.copyfile(f, query / Path(f).name)
    out = {}
    for lite in ("1", "0"):
        monkeypatch.setenv("METASHOT_LITE", lite)
        for flags in ([], ["--unknown"], ["--threshold", "0.5"]):
            assert main(["predict", str(saved["folder"]), "--query", str(query), "--quiet", *flags]) == 0
            out[lite, tuple(flags)] = [r.split(",") for r in capsys.readouterr().out.strip().splitlines()]
    for flags in ([], ["--unknown"], ["--threshold", "0.5"]):
        a, b = out["1", tuple(flags)], out["0", tuple(flags)]
        assert len(a) == 13 and [r[:2] for r in a] == [r[:2] for r in b], flags
        assert all(abs(float(x[2]) - float(y[2])) <= 2e-4 for x, y in zip(a[1:], b[1:], strict=True))
    assert "unknown" in [r[1] for r in out["1", ("--unknown",)]]
    monkeypatch.delenv("METASHOT_LITE")
    for flags in ([], ["--threshold", "0.5"]):
        code = ("import sys; from metashot.cli import main; "
                f"rc = main(['predict', {str(saved['folder'])!r}, '--query', {str(query)!r}, '--quiet', "
                f"*{flags!r}]); print(rc, 'torch' in sys.modules, file=sys.stderr)")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert run.stderr.split() == ["0", "False"] and run.stdout.count("\n") == 13, run.stderr
        assert [r.split(",")[:2] for r in run.stdout.strip().splitlines()] == \
            [r[:2] for r in out["1", tuple(flags)]]


def test_a_single_network_without_power_transform_agrees(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The lite path on another shape of model: one timm network (no ensemble), no power transform, the
    nearest-class-mean head, integer labels (timm/test_efficientnet forced through ONNX Runtime)."""
    import timm
    from PIL import Image
    from safetensors.torch import save_file

    monkeypatch.setenv("METASHOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("METASHOT_PRECISION", "onnx")
    net = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 50, 3), dtype=np.uint8)) for i in range(12)]
    clf = metashot.load("timm/test_efficientnet", pretrained=str(weights)).fit(ims[:6], [1, 2, 3] * 2)
    folder = clf.save(tmp_path / "clf")
    rt = json.loads((folder / "classifier.json").read_text())["runtime"]
    assert rt["ensemble"] is False and rt["power"] is None and rt["head"] == "ncm" and len(rt["members"]) == 1
    lite = metashot.load(folder, lite=True)
    assert list(lite.classes_) == [1, 2, 3]
    for kw in ({}, {"transductive": False}):
        got_labels, got = lite.classify(ims[6:], **kw)
        want_labels, want = clf.classify(ims[6:], **kw)
        assert got_labels.tolist() == want_labels.tolist()
        np.testing.assert_allclose(got, want, atol=1e-5)
