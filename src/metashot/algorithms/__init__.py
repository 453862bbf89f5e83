"""Built-in algorithms; importing this package registers them by name."""

from metashot.algorithms import (  # noqa: F401  (importing a module registers its algorithms)
    baseline,
    maml,
    matching,
    metalstm,
    protonet,
    relation,
    reptile,
    siamese,
    simpleshot,
)
from metashot.algorithms.base import MetaLearner, algorithm_class, available_algorithms, register

__all__ = ["MetaLearner", "algorithm_class", "available_algorithms", "register"]
