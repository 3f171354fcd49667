"""What the trainer hands to experiment trackers beyond the epoch records: step scalars and images.

Trackers are hook plugins (see :mod:`pretrain.spec.loggers`). Epoch records reach them
through ``pretrain_epoch_end`` (the same dict as ``metrics.jsonl``); this module adds

- ``pretrain_log_scalars``: ``train/loss``, ``train/lr``, ``train/images_per_s`` at every
  loss read-back (no extra device sync);
- ``pretrain_log_images``: after an evaluated epoch, MAE-style reconstructions (models
  with ``reconstruct``) and the validation confusion matrix (classifiers), drawn only
  when a plugin implements the hook. The confusion matrix costs one more pass over
  the validation data; every rank takes part (it is a collective), rank 0 draws.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from pretrain.components import Masked
from pretrain.engine.distributed import all_reduce_sum
from pretrain.engine.evaluate import autocast_context, to_memory_format

if TYPE_CHECKING:
    from pretrain.engine.trainer import Trainer

__all__ = ["confusion_matrix", "epoch_images", "log_step_scalars", "reconstruction_grid", "render_confusion"]


def log_step_scalars(trainer: Trainer, loss: float | None, lr: float, images_per_s: float) -> None:
    """Send the step's scalars to trackers (when one listens and the loss was read back)."""
    if loss is None or not trainer.hooks.has("pretrain_log_scalars"):
        return
    scalars = {"train/loss": loss, "train/lr": lr, "train/images_per_s": images_per_s}
    trainer.hooks.call("pretrain_log_scalars", trainer=trainer, step=trainer.state.step, scalars=scalars)


@torch.no_grad()
def confusion_matrix(trainer: Trainer) -> Tensor:
    """Counts (K, K) over the validation data, rows = true class, columns = predicted (summed over ranks)."""
    model: Any = trainer.strategy.eval_model(trainer.model)
    assert trainer.num_classes is not None and trainer.loaders.val is not None
    k = trainer.num_classes
    counts = torch.zeros(k * k, dtype=torch.long, device=trainer.device)
    was_training = model.training
    model.eval()
    for inputs, labels in trainer.loaders.val:
        with autocast_context(trainer.device, trainer.cfg.precision):
            scores = model.predict(to_memory_format(inputs, trainer.channels_last))["scores"]  # (B, K)
        counts += torch.bincount(labels.long() * k + scores.argmax(1), minlength=k * k)
    model.train(was_training)
    return all_reduce_sum(counts, trainer.dist).view(k, k).cpu()


def render_confusion(matrix: Tensor, classes: tuple[str, ...] | list[str]) -> np.ndarray:
    """A confusion matrix (row-normalised colours, counts written in) as uint8 (H, W, 3)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from PIL import Image

    k = matrix.shape[0]
    rates = (matrix.float() / matrix.sum(1, keepdim=True).clamp(min=1)).numpy()
    side = min(12.0, 2.0 + 0.45 * k)
    fig = Figure(figsize=(side, side), dpi=80)
    ax = fig.subplots()
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    names = [str(c) for c in classes] if len(classes) == k else [str(i) for i in range(k)]
    if k <= 40:
        ax.set_xticks(range(k), names, rotation=90, fontsize="small")
        ax.set_yticks(range(k), names, fontsize="small")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize="x-small",
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("validation confusion matrix")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    with Image.open(buf) as img:
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
    if trainer.last_eval is None or not trainer.hooks.has("pretrain_log_images"):
        return
    images: dict[str, Any] = {}
    if trainer.num_classes is not None:
        matrix = confusion_matrix(trainer)  # collective
        if trainer.dist.is_main:
            images["confusion_matrix"] = render_confusion(matrix, trainer.loaders.classes)
    elif trainer.dist.is_main:
        grid = reconstruction_grid(trainer)
        if grid is not None:
            images["reconstruction"] = grid
    if images:
        trainer.hooks.call("pretrain_log_images", trainer=trainer, step=trainer.state.step, images=images)
