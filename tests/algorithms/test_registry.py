"""The algorithm registry: every module of the package is discovered, and no name of before is dropped."""

from __future__ import annotations

import pkgutil
import sys

import metashot.algorithms
from metashot.algorithms.base import MetaLearner, algorithm_class, available_algorithms

# Every name registered when the package still listed its modules by hand (plus the text baselines).
NAMES = {"anil", "baseline", "logreg", "maml", "matching", "metalstm", "metasgd", "ncm", "protonet",
         "relation", "reptile", "siamese", "simpleshot"}


def test_no_registered_name_is_dropped() -> None:
    assert set(available_algorithms()) >= NAMES
    for name in NAMES:
        cls = algorithm_class(name)
        assert issubclass(cls, MetaLearner) and cls.algorithm_name == name


def test_every_module_of_the_package_is_imported() -> None:
    modules = [m.name for m in pkgutil.iter_modules(metashot.algorithms.__path__)]
    assert {"base", "protonet", "ncm", "logreg"} <= set(modules)
    assert all(f"metashot.algorithms.{m}" in sys.modules for m in modules)
