"""What the trainer hands to experiment trackers beyond the epoch records: step scalars and images.

Trackers are hook plugins (see :mod:`pretrain.spec.loggers`). Epoch records reach them
through ``pretrain_epoch_end`` (the same dict as ``metrics.jsonl``); this module adds

- ``pretrain_log_scalars``: ``train/loss``, ``train/lr``, ``train/images_per_s`` at every
  loss read-back (no extra device sync);
- ``pretrain_log_images``: after an evaluated epoch, MAE-style reconstructions (models
  with ``reconstruct``) and the validation confusion matrix (classifiers), drawn only
  when a plugin implements the hook. The confusion matrix is the one the evaluation
  counted (exact over ranks); rank 0 draws it, as it draws ``confusion_matrix.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pretrain.components import Masked
from pretrain.engine.plot import confusion_png

if TYPE_CHECKING:
    from pretrain.engine.trainer import Trainer

__all__ = ["epoch_images", "log_step_scalars", "reconstruction_grid", "render_confusion"]


def log_step_scalars(trainer: Trainer, loss: float | None, lr: float, images_per_s: float) -> None:
    """Send the step's scalars to trackers (when one listens and the loss was read back)."""
    if loss is None or not trainer.hooks.has("pretrain_log_scalars"):
        return
    scalars = {"train/loss": loss, "train/lr": lr, "train/images_per_s": images_per_s}
    trainer.hooks.call("pretrain_log_scalars", trainer=trainer, step=trainer.state.step, scalars=scalars)


def render_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> np.ndarray:
    """The confusion matrix drawn as ``confusion_matrix.png`` is, as uint8 (H, W, 3)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(confusion_png(matrix, classes))) as img:
        return np.asarray(img.convert("RGB")).copy()


@torch.no_grad()
def reconstruction_grid(trainer: Trainer, num: int = 8, seed: int = 0) -> np.ndarray | None:
    """Input / masked / reconstruction rows for the first validation images, uint8 (H, W, 3); None if not MAE-like."""
    model: Any = trainer.model
    if not callable(getattr(model, "reconstruct", None)) or trainer.loaders.val is None or trainer.strategy.sharded:
        return None
    images, _ = next(iter(trainer.loaders.val))
    if isinstance(images, Masked):
        batch: Any = Masked(images.map_images(lambda v: v[:num]).images, images.mask[:num])
    else:
        batch = [v[:num] for v in images] if isinstance(images, list) else images[:num]
    was_training = model.training
    model.eval()
    cuda = [trainer.device] if trainer.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # the training RNG stream stays untouched
        torch.manual_seed(seed)
        out = model.reconstruct(batch)
    model.train(was_training)
    rows = []
    for key in ("input", "masked", "reconstruction"):
        x = out[key].detach().float().cpu()  # (N, C, H, W) 0..255
        x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
        if key == "masked" and "mask" in out:
            grey = torch.full_like(x, 128.0)
            x = torch.where(out["mask"].bool().cpu().expand_as(x), grey, x)
        rows.append(torch.cat(list(x.round().clamp(0, 255).to(torch.uint8)), dim=2))  # (3, H, N*W)
    grid = torch.cat(rows, dim=1)  # (3, 3H, N*W)
    scale = max(1, -(-64 // (grid.shape[1] // 3)))  # tiles of at least 64 px
    grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return grid.permute(1, 2, 0).numpy().copy()


def epoch_images(trainer: Trainer) -> None:
    """After an evaluated epoch: draw the images trackers want and call ``pretrain_log_images``."""
    if trainer.last_eval is None or not trainer.dist.is_main or not trainer.hooks.has("pretrain_log_images"):
        return
    images: dict[str, Any] = {}
    matrix = trainer.last_eval.get("confusion_matrix")  # classifiers: counted by the evaluation itself
    if matrix is not None:
        images["confusion_matrix"] = render_confusion(matrix, trainer.loaders.classes)
    else:
        grid = reconstruction_grid(trainer)
        if grid is not None:
            images["reconstruction"] = grid
    if images:
        trainer.hooks.call("pretrain_log_images", trainer=trainer, step=trainer.state.step, images=images)
