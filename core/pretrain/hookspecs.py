"""pluggy hook specifications (entry-point group ``pretrain.plugins``).

A plugin module implements any subset of these with ``@pretrain.hookimpl`` and
accepts any subset of each hook's arguments (pluggy's opt-in arguments).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("pretrain")
hookimpl = pluggy.HookimplMarker("pretrain")


@hookspec
def pretrain_register_components(register: Callable[[str, str, Any], None]) -> None:
    """Register components programmatically: call ``register(kind, name, cls)``."""


@hookspec
def pretrain_train_start(trainer: Any) -> None:
    """Called once before the first epoch (after resume, model and data are ready)."""


@hookspec
def pretrain_after_step(trainer: Any, step: int, loss: float) -> None:
    """Called after every optimizer step with the global step and the step's loss."""


@hookspec
def pretrain_epoch_end(trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
    """Called after each epoch's evaluation with the metrics written to metrics.jsonl."""


@hookspec
def pretrain_train_end(trainer: Any, metrics: dict[str, float]) -> None:
    """Called once when training finishes normally, with the last epoch's metrics."""
