"""pluggy hook specifications (entry-point group ``pretrain.plugins``).

A plugin module implements any subset of these with ``@pretrain.hookimpl`` and
accepts any subset of each hook's arguments (pluggy's opt-in arguments). An
exception raised inside a hook stops the run with an error that names the plugin
and its distribution (checkpoints already written stay intact).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pretrain.engine.trainer import Trainer

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("pretrain")
hookimpl = pluggy.HookimplMarker("pretrain")


@hookspec
def pretrain_register_components(register: Callable[[str, str, Any], None]) -> None:
    """Register components programmatically: call ``register(kind, name, cls)``."""


@hookspec
def pretrain_train_start(trainer: Trainer) -> None:
    """Called once before the first epoch (after resume, model and data are ready)."""


@hookspec
def pretrain_after_step(trainer: Trainer, step: int, loss: float) -> None:
    """Called after every optimizer step with the global step and the step's loss."""


@hookspec
def pretrain_epoch_end(trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
    """Called after each epoch's evaluation with the metrics written to metrics.jsonl."""


@hookspec
def pretrain_log_scalars(trainer: Trainer, step: int, scalars: dict[str, float]) -> None:
    """Step-level scalars (``train/loss``, ``train/lr``, ``train/images_per_s``) at each loss read-back.

    Read-backs happen every ``train.log_every_steps`` steps on a GPU (every step on CPU);
    unlike ``pretrain_after_step`` this hook never forces a per-step device sync.
    """


@hookspec
def pretrain_log_images(trainer: Trainer, step: int, images: dict[str, Any]) -> None:
    """Images of an evaluated epoch: name -> uint8 (H, W, 3) numpy array (reconstructions, confusion matrix).

    They are drawn only when some plugin implements this hook.
    """


@hookspec
def pretrain_logger_schemas() -> dict[str, Any] | None:
    """Trackers this plugin provides: ``{name in [train.loggers]: pydantic model of its table}``."""


@hookspec
def pretrain_train_end(trainer: Trainer, metrics: dict[str, Any]) -> None:
    """Called once when training finishes normally, with the last epoch's metrics."""
