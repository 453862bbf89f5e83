"""Issue 30: one registry shape. Every registry refuses a second object under a taken name, carries the
metadata shared code reads instead of naming entries, and builds through one factory that lets a
constructor's own error through."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metashot.algorithms.base import ALGORITHMS, MetaLearner, register
from metashot.algorithms.heads import HEADS, Head, register_head
from metashot.data import DATASETS, register_dataset
from metashot.data.sources import SOURCES, register_source
from metashot.eval_settings import EVAL_SETTINGS, EvalSetting
from metashot.factory import create_learner
from metashot.nn.backbones import BACKBONES, register_backbone
from metashot.registry import Registry


def _cleanup(reg: Registry, name: str) -> None:
    reg._entries.pop(name, None)


@pytest.mark.parametrize("reg,decorate,taken", [
    (ALGORITHMS, register, "protonet"),
    (BACKBONES, register_backbone, "conv4"),
    (HEADS, register_head, "ncm"),
    (DATASETS, register_dataset, "omniglot"),
    (SOURCES, register_source, "sinusoid"),
])
def test_a_taken_name_is_an_error_in_every_registry(reg: Registry, decorate, taken: str) -> None:
    before = reg.get(taken)

    class Other(MetaLearner, Head):  # (any object: only the name clash matters)
        pass

    with pytest.raises(ValueError, match=rf"name '{taken}' is already registered by"):
        decorate(taken)(Other)
    assert reg.get(taken) is before  # nothing was overwritten


def test_evaluation_settings_refuse_a_taken_name_too() -> None:
    with pytest.raises(ValueError, match="'vectorized' is already registered"):
        EVAL_SETTINGS.add("vectorized", EvalSetting(bool, None, "x", "--x"))


def test_registering_the_same_object_twice_is_not_a_clash() -> None:
    reg: Registry[object] = Registry("thing")
    obj = object()
    reg.add("a", obj)
    reg.add("a", obj)
    assert reg.names() == ["a"]
    with pytest.raises(ValueError, match="unknown thing 'b'; available: \\['a'\\]"):
        reg.get("b")


def test_metadata_keys_are_declared() -> None:
    reg: Registry[object] = Registry("thing", defaults={"modality": "image"})
    assert reg.add("a", 1).modality == "image"
    assert reg.add("b", 2, modality="text").modality == "text"
    with pytest.raises(ValueError, match="unknown metadata \\['colour'\\]"):
        reg.add("c", 3, colour="red")


def test_datasets_carry_their_metadata() -> None:
    assert DATASETS.entry("omniglot").test_episodes == 1000
    assert DATASETS.entry("mini_imagenet").test_episodes is None
    assert {e.name for e in DATASETS.entries() if e.modality == "text"} == {"banking77", "clinc150", "hwu64",
                                                                          "intents"}
    assert {e.name: e.image_spec for e in DATASETS.entries() if e.image_spec} == {
        "mini_imagenet": "pretrained", "flowers102": "pretrained", "folder": "always"}


def test_a_new_text_dataset_makes_its_checkpoints_text_models() -> None:
    from metashot.text.glue import text_encoder_of

    meta = {"config": {"data": {"dataset": "test_sentences"}}}
    assert text_encoder_of(meta) is None
    register_dataset("test_sentences", modality="text")(lambda **kw: None)
    try:
        assert text_encoder_of(meta) is not None
    finally:
        _cleanup(DATASETS, "test_sentences")


def test_a_lazy_backbone_is_listed_before_its_module_is_imported() -> None:
    assert "timm" in BACKBONES.names()


def test_create_learner_raises_the_constructors_own_error() -> None:
    class Broken(MetaLearner):
        def __init__(self, backbone: nn.Module, width: int = 1) -> None:
            super().__init__()
            raise TypeError("a bug inside the constructor")

    register("test_broken")(Broken)
    try:
        model = {"algorithm": "test_broken", "backbone": "conv4", "backbone_args": {"depth": 1}}
        with pytest.raises(TypeError, match="a bug inside the constructor"):
            create_learner(model)
        with pytest.raises(ValueError, match="algorithm 'test_broken': bad algorithm_args .*'height'"):
            create_learner({**model, "algorithm_args": {"height": 2}})
    finally:
        _cleanup(ALGORITHMS, "test_broken")


def test_create_learner_takes_a_config_a_model_section_or_a_dict() -> None:
    from metashot.config import Config

    cfg = Config.from_dict({"model": {"algorithm": "protonet", "backbone": "conv4"}})
    torch.manual_seed(0)
    a = create_learner(cfg)
    torch.manual_seed(0)
    b = create_learner(cfg.model)
    torch.manual_seed(0)
    c = create_learner(dict(cfg.model.__dict__))
    for x, y in zip(a.state_dict().values(), c.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert type(a) is type(b) is type(c)


def test_cli_eval_flags_come_from_the_registered_settings() -> None:
    from metashot.cli import _message, build_parser
    from metashot.eval_settings import settings_from_flags
    from metashot.evaluate import OverrideError

    a = build_parser().parse_args(["eval", "x", "--path", "loop", "--inner-steps", "3", "--inductive"])
    assert settings_from_flags(vars(a)) == {"vectorized": False, "inner_steps_test": 3, "transductive": False}
    assert settings_from_flags(vars(build_parser().parse_args(["eval", "x"]))) == {}
    # (a change: --inductive on a learner without a transductive head is named by its flag, like the others)
    assert _message(OverrideError("transductive", "applies to ...")) == "--inductive applies to ..."
    assert _message(OverrideError("inner_lr", "applies to ...")) == "--inner-lr applies to ..."


def test_eval_reads_a_folder_splits_classes_from_the_dataset_registry(tmp_path, capsys) -> None:
    from metashot import cli_args as ca
    from metashot.cli import main

    for c in ("a", "b", "c"):
        (tmp_path / c).mkdir()
    assert ca.split_ways("folder", str(tmp_path), None) == 3  # registered with ways_from_split
    assert ca.split_ways("omniglot", "test", None) is None  # the checkpoint's own ways
    assert ca._split_classes("folder", tmp_path.name, str(tmp_path.parent)) == 3
    assert main(["eval", "protonet-omniglot", "--dataset", "folder", "--split", str(tmp_path), "--ways", "5",
                 "--quiet"]) == 2
    assert f"--ways 5: folder split {str(tmp_path)!r} has 3 classes" in capsys.readouterr().err
    (tmp_path / "b").rmdir()
    (tmp_path / "c").rmdir()
    with pytest.raises(ValueError, match="one class subfolder"):
        ca.split_ways("folder", str(tmp_path), None)
