"""Issue 28's Python API on a small bundled model (protonet-omniglot, drawings made here): save / load and
what the folder holds, the digest check, partial_fit embedding only new photos, scikit-learn's conventions
(clone, get_params / set_params, NotFittedError, cross_val_score over image paths), pickle and joblib, and
any timm model by name (timm/<name>) from a local weights file or, offline, one line at once."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import metashot
from metashot.checkpoint_files import CheckpointError
from metashot.estimator import NotFittedError

MODEL = "protonet-omniglot"


def _drawing(kind: int, shift: int) -> Image.Image:
    """A 64 x 64 drawing, dark ink on white: 0 a vertical bar, 1 a horizontal bar, 2 a cross, 3 a box."""
    a = np.full((64, 64), 255, np.uint8)
    s = shift
    if kind in (0, 2):
        a[8 + s : 56 - s, 29:35] = 0
    if kind in (1, 2):
        a[29:35, 8 + s : 56 - s] = 0
    if kind == 3:
        a[12 + s : 52 - s, 12:18] = 0
        a[12 + s : 52 - s, 46:52] = 0
        a[12:18, 12 + s : 52 - s] = 0
        a[46:52, 12 + s : 52 - s] = 0
    return Image.fromarray(a)


@pytest.fixture
def drawings(tmp_path: Path) -> tuple[list[str], list[str]]:
    """4 classes x 6 drawings as PNG files (paths) and their labels."""
    paths, labels = [], []
    for k, name in enumerate(["bar", "dash", "cross", "box"]):
        for i in range(6):
            p = tmp_path / f"{name}{i}.png"
            _drawing(k, i).save(p)
            paths.append(str(p))
            labels.append(name)
    return paths, labels


def _split(paths: list[str], labels: list[str], shots: int = 3) -> tuple[list, list, list, list]:
    s = [i for i in range(len(paths)) if i % 6 < shots]
    q = [i for i in range(len(paths)) if i % 6 >= shots]
    return [paths[i] for i in s], [labels[i] for i in s], [paths[i] for i in q], [labels[i] for i in q]


def test_save_and_load_round_trip(drawings, tmp_path: Path) -> None:
    sx, sy, qx, qy = _split(*drawings)
    clf = metashot.load(MODEL).fit(sx, sy)
    folder = clf.save(tmp_path / "clf")
    assert sorted(p.name for p in folder.iterdir()) == ["classifier.json", "support.safetensors"]  # no photos
    desc = json.loads((folder / "classifier.json").read_text())
    assert desc["model"]["name"] == MODEL and len(desc["model"]["digest"]) == 64
    assert desc["classes"] == ["bar", "box", "cross", "dash"] and desc["class_counts"] == [3, 3, 3, 3]
    assert desc["image_spec"]["size"] == 28 and desc["fitted_at"] and desc["runtime"] is None  # not ONNX
    again = metashot.load(folder)
    assert type(again).__name__ == "FewShotClassifier" and list(again.classes_) == list(clf.classes_)
    np.testing.assert_allclose(again.predict_proba(qx), clf.predict_proba(qx), atol=1e-6)
    assert again.score(qx, qy) == clf.score(qx, qy)
    with_photos = clf.save(tmp_path / "clf-photos", copy_photos=True)
    assert len(list((with_photos / "photos").rglob("*.png"))) == 12
    with pytest.raises(FileExistsError, match="is not a saved classifier"):
        clf.save(tmp_path)  # a folder that holds other things


def test_a_saved_classifier_refuses_another_model(drawings, tmp_path: Path) -> None:
    sx, sy, _, _ = _split(*drawings)
    folder = metashot.load(MODEL).fit(sx, sy).save(tmp_path / "clf")
    desc = json.loads((folder / "classifier.json").read_text())
    desc["model"]["digest"] = "0" * 64  # as if fitted on other weights or preprocessing
    (folder / "classifier.json").write_text(json.dumps(desc))
    with pytest.raises(CheckpointError, match="digest") as e:
        metashot.load(folder)
    assert "\n" not in str(e.value)


def test_partial_fit_embeds_only_the_new_photos(drawings) -> None:
    sx, sy, qx, qy = _split(*drawings)
    two = [i for i, y in enumerate(sy) if y in ("bar", "dash")]
    clf = metashot.load(MODEL).fit([sx[i] for i in two], [sy[i] for i in two])
    embedded: list[int] = []
    embed = clf.learner.embed
    clf.learner.embed = lambda x: embedded.append(len(x)) or embed(x)  # count the rows embedded
    new = [i for i, y in enumerate(sy) if y == "cross"]
    clf.partial_fit([sx[i] for i in new], ["cross"] * len(new))
    assert sum(embedded) == 3 and list(clf.classes_) == ["bar", "cross", "dash"]
    assert clf.support_embeddings_.shape[0] == 9
    crosses = [x for x, y in zip(qx, qy, strict=True) if y == "cross"]
    assert list(clf.predict(crosses)) == ["cross"] * 3


def test_scikit_learn_conventions(drawings) -> None:
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    paths, labels = drawings
    clf = metashot.load(MODEL)
    with pytest.raises(NotFittedError) as e:
        clf.predict(paths[:1])
    assert isinstance(e.value, ValueError) and isinstance(e.value, AttributeError)
    assert not hasattr(clf, "classes_")  # an AttributeError, as scikit-learn's check_is_fitted expects
    assert clf.set_params(batch_size=4) is clf and clf.get_params()["batch_size"] == 4
    clf.fit(paths, labels)
    twin = clone(clf)
    assert type(twin) is type(clf) and "classes_" not in twin.__dict__
    assert twin.get_params().keys() == clf.get_params().keys() and twin.batch_size == 4
    scores = cross_val_score(metashot.load(MODEL), paths, labels, cv=StratifiedKFold(2, shuffle=True,
                                                                                    random_state=0))
    assert scores.shape == (2,) and all(0.75 <= s <= 1 for s in scores), scores


def test_pickle_and_joblib_keep_a_fitted_classifier(drawings, tmp_path: Path) -> None:
    import joblib

    sx, sy, qx, _ = _split(*drawings)
    clf = metashot.load(MODEL).fit(sx, sy)
    want = clf.predict_proba(qx)
    for again in (pickle.loads(pickle.dumps(clf)),
                  joblib.load(joblib.dump(clf, tmp_path / "clf.joblib")[0])):
        np.testing.assert_allclose(again.predict_proba(qx), want, atol=1e-6)
        assert list(again.classes_) == list(clf.classes_)


def test_any_timm_model_by_name(tmp_path: Path, drawings) -> None:
    """timm/<name> is SimpleShot on that network: from a local weights file here; a name timm lacks and, with
    no internet, a model whose weights are neither packaged nor cached are one-line errors."""
    import timm
    from safetensors.torch import save_file

    net = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    clf = metashot.load("timm/test_efficientnet", pretrained=str(weights))
    assert clf.learner.algorithm_name == "simpleshot" and clf.source == "timm/test_efficientnet"
    sx, sy, qx, _ = _split(*drawings)
    proba = clf.fit(sx, sy).predict_proba(qx)
    assert proba.shape == (12, 4) and np.allclose(proba.sum(1), 1)
    folder = clf.save(tmp_path / "timm-clf")
    np.testing.assert_allclose(metashot.load(folder).predict_proba(qx), proba, atol=1e-5)
    with pytest.raises(ValueError, match="has no model"):
        metashot.load("timm/no_such_network_xyz")
    from metashot.timm_load import hub_reachable

    if not hub_reachable():  # this machine (and CI) have no internet: the error comes at once, in one line
        with pytest.raises(RuntimeError, match="no internet") as e:
            metashot.load("timm/convnext_atto")
        assert "\n" not in str(e.value) and "pretrained=" in str(e.value)
