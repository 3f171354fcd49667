"""The training engine: ``[data]``/``[train]``/``[eval]`` sections, the loop, checkpoints.

Importing this package is cheap (torch-free); ``Trainer`` and ``evaluate_model`` are
loaded on first access. See ``docs/training.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Trainer", "evaluate_model"]

if TYPE_CHECKING:
    from pretrain.engine.trainer import Trainer, evaluate_model


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("pretrain.engine.trainer"), name)
    raise AttributeError(f"module 'pretrain.engine' has no attribute {name!r}")
