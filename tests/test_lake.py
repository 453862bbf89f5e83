"""Lake's one-shot runs: archive parser, MHD baseline (official demo: 38.8% error), evaluator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from metashot.algorithms.protonet import ProtoNet
from metashot.config import Config, ModelConfig
from metashot.data.lake_runs import LakeRun, load_lake_runs
from metashot.data.omniglot import OMNIGLOT_SPEC
from metashot.lake import evaluate_learner, evaluate_mhd, ink_points, modified_hausdorff


@pytest.fixture(scope="module")
def runs(data_root: Path) -> list[LakeRun]:
    return load_lake_runs(data_root)


def test_parser_reads_the_official_archive(runs: list[LakeRun]) -> None:
    assert [r.name for r in runs] == [f"run{i:02d}" for i in range(1, 21)]
    for r in runs:
        assert r.train_images.shape == (20, 105, 105) and r.test_images.shape == (20, 105, 105)
        assert r.train_images.dtype == np.uint8 and set(np.unique(r.train_images)) <= {0, 255}
        # Each training image is the answer of exactly one test image (20 distinct classes).
        assert sorted(r.answers.tolist()) == list(range(20))
    # run01/class_labels.txt starts "run01/test/item01.png run01/training/class08.png".
    r1 = runs[0]
    assert r1.test_files[0] == "run01/test/item01.png"
    assert r1.train_files[r1.answers[0]] == "run01/training/class08.png"


def test_parser_errors_name_the_problem(tmp_path: Path) -> None:
    run = tmp_path / "run01"
    (run / "training").mkdir(parents=True)
    (run / "test").mkdir()
    from PIL import Image

    Image.new("L", (8, 8), 255).save(run / "training" / "class01.png")
    Image.new("L", (8, 8), 255).save(run / "test" / "item01.png")
    (run / "class_labels.txt").write_text("run01/test/item01.png run01/training/class02.png\n")
    with pytest.raises(ValueError, match="class02"):
        load_lake_runs(path=tmp_path)
    with pytest.raises(FileNotFoundError, match="all_runs.zip"):
        load_lake_runs(root=tmp_path)


def test_modified_hausdorff_by_hand() -> None:
    a = np.array([[0.0, 0.0], [0.0, 2.0]])
    b = np.array([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    # a -> b: nearest distances 0 and 1, mean 0.5; b -> a: 0, 1, 3, mean 4/3; MHD is the larger.
    assert modified_hausdorff(a, b) == pytest.approx(4 / 3)
    img = np.full((5, 5), 255, np.uint8)
    img[1, 1] = img[3, 3] = 0
    assert np.allclose(ink_points(img), [[-1, -1], [1, 1]])


@pytest.mark.slow
def test_mhd_baseline_reproduces_the_official_demo(runs: list[LakeRun]) -> None:
    res = evaluate_mhd(runs)
    # 155 of 400 test images wrong: 38.75%, which the demo prints as 38.8%.
    assert res["error"] == pytest.approx(38.75)
    assert round(res["error"], 1) == 38.8
    assert res["runs"] == 20 and res["trials"] == 400


def test_evaluator_maps_answers(runs: list[LakeRun]) -> None:
    """Pixel nearest neighbour (ProtoNet on identity features) is exact when test images are training ones."""
    r = runs[0]
    perm = np.random.default_rng(0).permutation(20)
    copy = LakeRun("copy", r.train_files, r.test_files, r.train_images, r.train_images[perm], perm)
    learner = ProtoNet(nn.Flatten())
    assert evaluate_learner(learner, OMNIGLOT_SPEC, [copy])["error"] == 0.0
    real = evaluate_learner(learner, OMNIGLOT_SPEC, runs[:4])
    assert real["error"] < 90.0  # chance is 95%


def test_cli_lake_on_a_checkpoint(runs: list[LakeRun], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from metashot.checkpoint import build_learner, save_checkpoint
    from metashot.cli import main

    cfg = Config(model=ModelConfig(backbone_args={"in_channels": 1, "hidden": 8, "out_channels": 8}))
    torch.manual_seed(0)
    learner = build_learner(dict(cfg.model.__dict__))
    save_checkpoint(tmp_path / "ck", learner, cfg.to_dict(), extra={"image_spec": OMNIGLOT_SPEC.to_dict()})
    assert main(["lake", str(tmp_path / "ck"), "--runs", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"] == 2 and out["trials"] == 40 and 0.0 <= out["error"] <= 100.0
    assert main(["lake", "--json"]) == 2  # neither a checkpoint nor a baseline


def test_bundled_lake_model(runs: list[LakeRun]) -> None:
    """The shipped ``lake-omniglot`` (chosen on validation runs, issue 18), pinned exactly on all 20 official
    runs and on the 50 validation runs: the figures of results/lake/test.jsonl and val.jsonl."""
    from metashot.checkpoint import bundled_path
    from metashot.data.lake_runs import validation_runs
    from metashot.lake import evaluate_checkpoint

    path = bundled_path("lake-omniglot")
    assert path is not None
    assert sum(f.stat().st_size for f in path.iterdir()) < 2 * 2**20
    res = evaluate_checkpoint("lake-omniglot", runs)
    assert res["trials"] == 400 and round(res["error"] * 4) == 33  # 8.25 % = 33 wrong of 400
    assert res["run_errors"] == [0.0, 15.0, 5.0, 15.0, 10.0, 5.0, 10.0, 10.0, 5.0, 20.0,
                                 5.0, 10.0, 5.0, 5.0, 0.0, 0.0, 5.0, 15.0, 10.0, 15.0]
    val = evaluate_checkpoint("lake-omniglot", validation_runs())
    assert val["trials"] == 1000 and round(val["error"] * 10) == 102  # 10.2 % on the validation runs


def test_lake_refuses_a_model_with_non_finite_scores(runs: list[LakeRun], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """A NaN weight gives NaN logits: an error, never "95.00 % error" (issue 27 item 1)."""
    from metashot.checkpoint import build_learner, save_checkpoint
    from metashot.cli import main

    cfg = Config(model=ModelConfig(backbone_args={"in_channels": 1, "hidden": 8, "out_channels": 8}))
    torch.manual_seed(0)
    learner = build_learner(dict(cfg.model.__dict__))
    with torch.no_grad():
        next(learner.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=r"run01.*not finite"):
        evaluate_learner(learner, OMNIGLOT_SPEC, runs[:1])
    save_checkpoint(tmp_path / "ck", learner, cfg.to_dict(), extra={"image_spec": OMNIGLOT_SPEC.to_dict()})
    assert main(["lake", str(tmp_path / "ck"), "--runs", "2"]) == 2
    out = capsys.readouterr()
    assert "not finite" in out.err and "% error" not in out.out
