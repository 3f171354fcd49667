"""The training runtime: loaders, the loop, checkpoints, evaluation, distribution.

Importing this package is cheap (torch-free); names are loaded on first access.
See ``docs/training.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Trainer", "evaluate", "evaluate_model", "train"]

_LAZY = {
    "Trainer": "pretrain.engine.trainer",
    "train": "pretrain.engine.api",
    "evaluate": "pretrain.engine.api",
    "evaluate_model": "pretrain.engine.evaluate",
}

if TYPE_CHECKING:
    from pretrain.engine.api import evaluate, train
    from pretrain.engine.evaluate import evaluate_model
    from pretrain.engine.trainer import Trainer


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pretrain.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
