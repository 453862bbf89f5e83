"""The shipped ``protonet-omniglot`` weights: small, loadable by name, and accurate on raw Omniglot PNGs."""

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import metashot
from metashot.checkpoint import bundled_path
from metashot.evaluate import evaluate


def test_bundled_weights_are_small_and_load_by_name():
    path = bundled_path("protonet-omniglot")
    assert path is not None
    assert sum(p.stat().st_size for p in path.iterdir()) < 2 * 1024 * 1024
    clf = metashot.load("protonet-omniglot")
    assert clf.image_spec is not None and clf.image_spec.size == 28 and clf.image_spec.invert


@pytest.mark.slow
def test_bundled_model_on_test_episodes(omniglot_test):
    clf = metashot.load("protonet-omniglot")
    res = evaluate(clf.learner, omniglot_test, 5, 1, 15, episodes=40, seed=1234, progress=False)
    assert res["acc"] > 90.0  # 1000 episodes give the RESULTS.md figure; 40 keep the suite fast


def test_fit_predict_on_raw_evaluation_pngs(data_root):
    """5-way 1-shot from the original 105x105 PNG files of five evaluation-set characters, 19 queries each."""
    support, index, queries, truth_index = _small_task(data_root, queries_per_char=19)
    names = ["alpha", "beta", "gamma", "delta", "epsilon"]  # string labels, as users give them
    labels, truth = [names[i] for i in index], [names[i] for i in truth_index]
    clf = metashot.load("protonet-omniglot").fit(support, labels)
    pred = clf.predict(queries)
    acc = float(np.mean([p == t for p, t in zip(pred, truth, strict=True)]))
    assert acc > 0.8
    proba = clf.predict_proba(queries[:3])
    assert proba.shape == (3, 5) and np.allclose(proba.sum(1), 1.0)


def _small_task(data_root, queries_per_char: int = 4):
    """5 evaluation-set characters: 1 support and ``queries_per_char`` query PIL images (mode "1", as stored)
    each; returns (support, labels 0..4, queries, their labels)."""
    with zipfile.ZipFile(data_root / "omniglot" / "images_evaluation.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        by_char: dict[str, list[str]] = {}
        for n in names:
            by_char.setdefault(n.rsplit("/", 1)[0], []).append(n)
        chars = sorted(by_char)[::40][:5]
        support = [Image.open(io.BytesIO(zf.read(by_char[c][0]))) for c in chars]
        queries = [Image.open(io.BytesIO(zf.read(n))) for c in chars
                   for n in by_char[c][1:1 + queries_per_char]]
    for im in support + queries:
        im.load()
    return support, list(range(5)), queries, [i for i in range(5) for _ in range(queries_per_char)]


def _transparent(im: Image.Image) -> Image.Image:
    """The drawing as a drawing app exports it: black ink, alpha = ink, transparent (black) background."""
    ink = 255 - np.asarray(im.convert("L"))
    rgba = np.zeros(ink.shape + (4,), np.uint8)
    rgba[..., 3] = ink
    return Image.fromarray(rgba, "RGBA")


def _inverted(im: Image.Image) -> Image.Image:
    return Image.fromarray(255 - np.asarray(im.convert("L")))


def test_transparent_background_drawing_scores_like_the_opaque_one(data_root, recwarn):
    support, labels, queries, truth = _small_task(data_root)
    clf = metashot.load("protonet-omniglot").fit(support, labels)
    want = clf.predict_proba(queries)
    clf.fit([_transparent(s) for s in support], labels)
    got = clf.predict_proba([_transparent(q) for q in queries])
    assert np.allclose(got, want, atol=1e-5)
    transparent_score = clf.score([_transparent(q) for q in queries], truth)
    assert transparent_score == clf.fit(support, labels).score(queries, truth) > 0.8
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)], "like opaque input: no warning"


def test_already_inverted_drawings_are_used_as_they_are_with_one_warning(data_root):
    """White ink on black scored 77% (inverted twice); now it gets the same probabilities, and one warning."""
    support, labels, queries, truth = _small_task(data_root)
    clf = metashot.load("protonet-omniglot").fit(support, labels)
    want = clf.predict_proba(queries)
    with pytest.warns(UserWarning, match="already inverted") as rec:
        clf.fit([_inverted(s) for s in support], labels)
    assert len(rec) == 1 and "5 of 5 fit images" in str(rec[0].message)
    with pytest.warns(UserWarning, match="already inverted") as rec:
        got = clf.predict_proba([_inverted(q) for q in queries[:10]] + queries[10:])
    assert len(rec) == 1 and "10 of 20 predict images" in str(rec[0].message)
    # (the box filter rounds 255 - x and x a grey level apart, hence not bit-identical)
    assert np.abs(got - want).max() < 1e-3 and (got.argmax(1) == want.argmax(1)).all()


def test_bool_arrays_of_omniglot_pngs_are_accepted(data_root):
    support, labels, queries, _ = _small_task(data_root)
    assert np.asarray(support[0]).dtype == bool  # np.array(Image.open(png)) of an Omniglot file
    clf = metashot.load("protonet-omniglot").fit(support, labels)
    want = clf.predict_proba(queries)
    clf.fit([np.array(s) for s in support], labels)
    assert np.allclose(clf.predict_proba([np.array(q) for q in queries]), want, atol=1e-6)


def test_colour_photos_for_the_drawing_model_warn_once_per_call(data_root):
    support, labels, queries, _ = _small_task(data_root)
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(3)]
    blue_ink = Image.new("RGB", (105, 105), "white")
    blue_ink.paste((20, 40, 200), (40, 10, 50, 95))  # a blue pen stroke on paper is a drawing, not a photo
    clf = metashot.load("protonet-omniglot").fit(support, labels)
    with pytest.warns(UserWarning, match="colour photos") as rec:
        clf.predict(photos + [blue_ink] + queries)
    assert len(rec) == 1 and "3 of 24 predict images" in str(rec[0].message)


def test_bundled_temperature_calibrates_probabilities_not_labels(data_root):
    support, labels, queries, truth = _small_task(data_root)
    clf = metashot.load("protonet-omniglot").fit(support, labels)
    t = clf.meta["temperature"]
    assert clf.temperature == t and 1.0 < t < 3.0  # benchmarks/calibration.py on 300 val episodes
    x = clf._to_tensor(queries, "q")
    with torch.inference_mode():
        raw = clf._predictor(x)
    assert np.allclose(clf.decision_function(queries), (raw / t).numpy(), atol=1e-5)
    assert np.allclose(clf.predict_proba(queries), torch.softmax(raw / t, -1).numpy(), atol=1e-6)
    assert list(clf.predict(queries)) == list(raw.argmax(1).numpy())
    assert "temperature=" in repr(clf) and "protonet-omniglot" in repr(clf)
