"""Built-in algorithms; importing this package registers them by name.

Every module of this package is imported here (found with :mod:`pkgutil`, in name order), so adding an
algorithm is adding one file: its ``@register`` decorator runs on import.
"""

import importlib
import pkgutil

from metashot.algorithms.base import MetaLearner, algorithm_class, available_algorithms, register

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
del _module

__all__ = ["MetaLearner", "algorithm_class", "available_algorithms", "register"]
