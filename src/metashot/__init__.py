"""metashot: meta-learning and few-shot learning for PyTorch.

Every algorithm is one mapping ``learner.adapt(support_x, support_y) -> predictor``; see DESIGN in the docs.

The public names are imported on first use (PEP 562), so ``import metashot`` and ``metashot --version`` do
not import torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from typing import Any

__version__ = "0.1.0"
# public name -> the module that defines it
_WHERE = {"FewShotClassifier": "metashot.classifier", "load": "metashot.loader",
          "Config": "metashot.config", "load_config": "metashot.config",
          "ClassStore": "metashot.data", "EpisodeBatch": "metashot.data", "EpisodeSampler": "metashot.data",
          "load_split": "metashot.data", "evaluate": "metashot.evaluate"}
__all__ = ["ClassStore", "Config", "EpisodeBatch", "EpisodeSampler", "FewShotClassifier", "evaluate", "load",
           "load_config", "load_split", "__version__"]


class _Package(types.ModuleType):
    """The package module: a submodule import (``metashot.evaluate``) never hides the public function of the
    same name once it is bound, as with the eager imports before."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _WHERE and isinstance(value, types.ModuleType) and value.__name__ == _WHERE[name]:
            value = getattr(value, name)
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")  # a submodule, as after the eager imports
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


sys.modules[__name__].__class__ = _Package


def _one_thread_after_fork() -> None:
    """Fork safety without importing torch here (metashot.nn.threads explains the hang): a forked child of a
    process that has torch runs its CPU ops on one thread."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.set_num_threads(1)
        except Exception:  # never break a fork over this
            pass


os.register_at_fork(after_in_child=_one_thread_after_fork)
