"""The shipped ``protonet-omniglot`` weights: small, loadable by name, and accurate on raw Omniglot PNGs."""

import io
import zipfile

import numpy as np
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


def test_bundled_model_on_test_episodes(omniglot_test):
    clf = metashot.load("protonet-omniglot")
    res = evaluate(clf.learner, omniglot_test, 5, 1, 15, episodes=40, seed=1234, progress=False)
    assert res["acc"] > 90.0  # 1000 episodes give the RESULTS.md figure; 40 keep the suite fast


def test_fit_predict_on_raw_evaluation_pngs(data_root):
    """5-way 1-shot from the original 105x105 PNG files of five evaluation-set characters, 19 queries each."""
    with zipfile.ZipFile(data_root / "omniglot" / "images_evaluation.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        by_char: dict[str, list[str]] = {}
        for n in names:
            by_char.setdefault(n.rsplit("/", 1)[0], []).append(n)
        chars = sorted(by_char)[::40][:5]

        def img(n: str) -> Image.Image:
            return Image.open(io.BytesIO(zf.read(n)))

        support = [img(by_char[c][0]) for c in chars]
        queries = [img(n) for c in chars for n in by_char[c][1:]]
        truth = [c.split("/")[-1] + "@" + c.split("/")[-2] for c in chars for _ in by_char[c][1:]]
    labels = [c.split("/")[-1] + "@" + c.split("/")[-2] for c in chars]
    clf = metashot.load("protonet-omniglot").fit(support, labels)
    pred = clf.predict(queries)
    acc = float(np.mean([p == t for p, t in zip(pred, truth, strict=True)]))
    assert acc > 0.8
    proba = clf.predict_proba(queries[:3])
    assert proba.shape == (3, 5) and np.allclose(proba.sum(1), 1.0)
