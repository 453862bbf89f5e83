"""Lake's 20-way within-alphabet one-shot benchmark: error rate of any metashot model and of baselines.

Lake, Salakhutdinov & Tenenbaum, Science 2015 (the 20 runs of ``omniglot/all_runs.zip``, see
:mod:`metashot.data.lake_runs`). Published error rates: humans 4.5%, Bayesian program learning 3.3%, Siamese
ConvNet (Koch et al. 2015) 8.0%, the modified Hausdorff distance baseline of the official demo 38.8%.

* A metashot model adapts on each run's 20 training images (labels 0..19, one per class) and classifies the
  run's 20 test images by the argmax of its logits; images are preprocessed with the checkpoint's
  ``image_spec``.
* The modified Hausdorff distance (MHD) baseline (Dubuisson & Jain 1994) turns each image into the
  coordinates of its ink pixels, centred on their mean, and scores a (test, training) pair by
  ``MHD(A, B) = max(mean_a min_b ||a - b||, mean_b min_a ||a - b||)``; each test image takes the class of the
  training image with the *smallest* MHD (a cost).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metashot.algorithms.base import MetaLearner
from metashot.data.lake_runs import LakeRun, load_lake_runs
from metashot.data.preprocess import ImageSpec, preprocess, to_float

PUBLISHED_ERROR = {"humans": 4.5, "bpl": 3.3, "siamese_koch2015": 8.0, "mhd": 38.8}


def ink_points(image: np.ndarray) -> np.ndarray:
    """Ink coordinates of a raw run image, centred on their mean: uint8 [H, W] (ink = 0) -> float [n, 2].

    A pixel is ink when it is black (value 0, the 1-bit PNG's False); rows are (row, column).
    """
    if image.ndim != 2:
        raise ValueError(f"ink_points: expected one [H, W] image, got shape {image.shape}")
    pts = np.argwhere(image == 0).astype(np.float64)
    if len(pts) == 0:
        raise ValueError("ink_points: the image has no ink (no black pixel)")
    return pts - pts.mean(axis=0)


def modified_hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """MHD of point sets a [n, 2], b [m, 2]: the larger of the two directed mean nearest-point distances."""
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # [n, m]
    return float(max(d.min(axis=1).mean(), d.min(axis=0).mean()))


def mhd_costs(run: LakeRun) -> np.ndarray:
    """MHD between every test image (rows) and training image (columns) of a run: float64 [M, N].

    Nearest-point distances are exact either way: with scipy installed (the ``lake`` extra) a k-d tree per
    image answers them about 3x faster than the brute-force [n, m] distance matrix used otherwise.
    """
    train = [ink_points(im) for im in run.train_images]
    test = [ink_points(im) for im in run.test_images]
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        return np.array([[modified_hausdorff(q, s) for s in train] for q in test])
    train_trees = [cKDTree(s) for s in train]
    test_trees = [cKDTree(q) for q in test]
    return np.array([[max(train_trees[j].query(q)[0].mean(), test_trees[i].query(s)[0].mean())
                      for j, s in enumerate(train)] for i, q in enumerate(test)])


def select_runs(root: str | Path | None = None, val: bool = False, limit: int | None = None) -> list[LakeRun]:
    """Lake's 20 test runs, or with ``val`` the 50 validation runs built from the held-out background
    alphabets (choose models on these); only the first ``limit`` when given."""
    if val:
        from metashot.data.lake_runs import validation_runs

        runs = validation_runs(root=root)
    else:
        runs = load_lake_runs(root)
    return runs[:limit] if limit else runs


def run_error(predicted: np.ndarray, run: LakeRun) -> float:
    """Percent of a run's test images whose predicted training index is wrong."""
    return float(100.0 * np.mean(np.asarray(predicted) != run.answers))


def _summary(errors: list[float], runs: list[LakeRun], method: str, t0: float) -> dict[str, Any]:
    return {"error": round(float(np.mean(errors)), 4), "runs": len(runs),
            "trials": int(sum(len(r.test_files) for r in runs)),
            "run_errors": [round(e, 4) for e in errors], "method": method,
            "seconds": round(time.perf_counter() - t0, 2)}


def evaluate_mhd(runs: list[LakeRun] | None = None) -> dict[str, Any]:
    """Error (percent, mean over runs) of the training-free MHD baseline; the official demo reports 38.8."""
    t0 = time.perf_counter()
    runs = load_lake_runs() if runs is None else runs
    errors = [run_error(mhd_costs(r).argmin(axis=1), r) for r in runs]
    return _summary(errors, runs, "mhd", t0)


def _images(images: np.ndarray, spec: ImageSpec, device: torch.device | str) -> torch.Tensor:
    arr = np.stack([preprocess(im, spec, source="lake run image") for im in images])
    return to_float(torch.from_numpy(arr)).to(device)


def evaluate_learner(learner: MetaLearner, image_spec: ImageSpec | dict[str, Any],
                     runs: list[LakeRun] | None = None, device: str | torch.device = "cpu",
                     method: str | None = None) -> dict[str, Any]:
    """Error (percent) of a metashot learner: adapt on each run's training images, predict its test images.

    Args:
        learner: any MetaLearner (put in eval mode here, restored after).
        image_spec: the checkpoint's preprocessing (size, channels, ink polarity, filter).
        runs: the runs (default: the official archive under ``$METASHOT_DATA``).

    Raises:
        ValueError: the model's logits hold NaN/Inf (a diverged or damaged model), naming the run.
    """
    from metashot.classifier import check_finite

    t0 = time.perf_counter()
    spec = ImageSpec.from_dict(image_spec) if isinstance(image_spec, dict) else image_spec
    runs = load_lake_runs() if runs is None else runs
    was = learner.training
    learner.eval()
    errors = []
    try:
        for r in runs:
            sx, qx = _images(r.train_images, spec, device), _images(r.test_images, spec, device)
            sy = torch.arange(r.ways, device=device)
            with learner.adapt_mode():
                logits = learner.adapt(sx, sy)(qx)
            if logits.shape != (len(r.test_files), r.ways):
                raise ValueError(f"Lake evaluation: {learner.algorithm_name} returned logits of shape "
                                 f"{tuple(logits.shape)} on {r.name}; expected "
                                 f"({len(r.test_files)}, {r.ways})")
            check_finite(logits, f"Lake evaluation of {learner.algorithm_name} on {r.name}")
            errors.append(run_error(logits.argmax(-1).cpu().numpy(), r))
    finally:
        learner.train(was)
    return _summary(errors, runs, method or learner.algorithm_name, t0)


def evaluate_checkpoint(name_or_path: str, runs: list[LakeRun] | None = None,
                        device: str | torch.device = "cpu") -> dict[str, Any]:
    """Lake error of a checkpoint (folder, run folder or bundled name), with its own preprocessing."""
    from metashot.checkpoint import load_checkpoint

    learner, meta = load_checkpoint(name_or_path, device)
    spec = meta.get("image_spec")
    if not spec:
        raise ValueError(f"Lake evaluation: checkpoint {name_or_path} records no image_spec, so its input "
                         f"preprocessing is unknown; it must be trained on an image dataset")
    res = evaluate_learner(learner, spec, runs, device)
    res["checkpoint"] = str(name_or_path)
    return res
