"""The library functions behind the CLI commands (issue 19): the CLI parses, calls them and prints."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metashot.cli import main

SRC = Path(__file__).resolve().parents[1] / "src" / "metashot"


def test_cli_knows_no_algorithm() -> None:
    """cli.py imports no algorithm and sets no learner attribute (the library applies declared settings)."""
    tree = ast.parse((SRC / "cli.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.startswith("metashot.algorithms") for m in imported), imported
    assigned = [ast.unparse(t) for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets]
    assert not any(t.startswith("learner.") for t in assigned), assigned
    assert "hasattr" not in (SRC / "cli.py").read_text()


def test_sinusoid_data_knows_no_algorithm() -> None:
    """The dataset module samples tasks; fine-tuning a learner on them lives in metashot.sinusoid_eval."""
    text = (SRC / "data" / "sinusoid.py").read_text()
    assert "query_outputs" not in text and "metashot.algorithms" not in text
    from metashot.sinusoid_eval import evaluate_checkpoints, finetune_mse, plot_fits  # noqa: F401


def test_query_images_file_folder_and_errors(tmp_path: Path) -> None:
    from metashot.classifier import query_images

    one = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(one)
    assert query_images(one) == [one] and query_images(tmp_path) == [one]
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file but not an image"):
        query_images(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        query_images(tmp_path / "nowhere")


def test_bundled_models_rows() -> None:
    from metashot.checkpoint import bundled_names
    from metashot.classifier import bundled_models

    rows = bundled_models()
    assert [r["name"] for r in rows] == bundled_names()
    assert all(set(r) == {"name", "card", "path"} and Path(r["path"]).is_dir() for r in rows)


def test_lake_select_runs_limits() -> None:
    from metashot.lake import select_runs

    runs = select_runs(limit=3)
    assert [r.name for r in runs] == [r.name for r in select_runs()[:3]]


def test_sinusoid_inner_lr_on_a_learner_without_one(capsys: pytest.CaptureFixture[str]) -> None:
    """--inner-lr is an evaluation setting: a learner without an inner loop refuses it, named by its flag."""
    from metashot.sinusoid_eval import evaluate_checkpoints

    with pytest.raises(ValueError, match=r"'inner_lr' applies to the gradient-based learners.*ProtoNet"):
        evaluate_checkpoints({"MAML": "protonet-omniglot"}, tasks=1, inner_lr=0.1)
    assert main(["sinusoid", "eval", "protonet-omniglot", "--tasks", "1", "--inner-lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "error: --inner-lr applies to the gradient-based learners" in err and err.count("\n") == 1


def test_rl_step_sizes_parse_and_check_labels() -> None:
    from metashot.rl.evaluation import parse_step_sizes

    assert parse_step_sizes(["nav=0.3,0.1", "random-init=0.5"], ["nav", "random-init"]) == {
        "nav": [0.3, 0.1], "random-init": [0.5]}
    with pytest.raises(ValueError, match=r"--lr-of expects LABEL=LR\[,LR...\], got 'nav'"):
        parse_step_sizes(["nav"], ["nav"])
    with pytest.raises(ValueError, match=r"names no evaluated policy: \['other'\]; labels are \['nav'\]"):
        parse_step_sizes(["other=0.1"], ["nav"])


def test_rl_evaluate_policies_is_evaluate_adaptation_per_policy(one_thread: None) -> None:
    from metashot.rl.evaluation import (
        RANDOM_LABEL,
        evaluate_adaptation,
        evaluate_policies,
        load_policies,
        returns_line,
    )

    loaded = load_policies(["maml-trpo-navigation2d"], random=True, random_seed=3)
    assert [label for label, *_ in loaded] == ["maml-trpo-navigation2d", RANDOM_LABEL]
    assert not loaded[1][2].env.options.get("observe_goal")  # the random policy never sees the goal
    seen: list[str] = []
    report = evaluate_policies(loaded, {RANDOM_LABEL: [0.2]}, None, tasks=2, trajectories=2, steps=1, seed=5,
                               on_result=lambda label, res: seen.append(returns_line(label, res)))
    assert list(report) == [label for label, *_ in loaded] and len(seen) == 2
    assert seen[0].startswith("maml-trpo-navigation2d (navigation2d, 2 tasks x 2 trajectories): return after")
    label, policy, cfg = loaded[0]
    env = cfg.make_env()
    ref = evaluate_adaptation(policy, env, 2, 2, 1, cfg.eval.inner_lr, 5, cfg.algo.discount)
    env.close()
    assert report[label]["returns"] == ref["returns"] and report[RANDOM_LABEL]["inner_lr"] == [0.2]
