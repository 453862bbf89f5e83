"""Built-in algorithms; importing this package registers them by name."""

from metashot.algorithms import protonet  # noqa: F401
from metashot.algorithms import maml, reptile  # noqa: F401
from metashot.algorithms import metalstm  # noqa: F401
from metashot.algorithms import siamese  # noqa: F401
from metashot.algorithms.base import MetaLearner, algorithm_class, available_algorithms, register

__all__ = ["MetaLearner", "algorithm_class", "available_algorithms", "register"]
