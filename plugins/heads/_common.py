"""Helpers shared by classification heads: target conversion, the loss call, top-k accuracy.

Any head that ends in class logits can reuse them::

    from pretrain_builtins.heads._common import classification_loss

    def loss(self, feats, targets):
        return classification_loss(self.loss_module, self(feats), targets,
                                   topk=self.topk, cal_acc=self.cal_acc)

Targets are class indices (N,) or dense class scores (N, C) (one-hot, smoothed,
or Mixup/CutMix mixtures). :func:`targets_for_loss` hands the loss what its
``target_kind`` asks for: indices become one-hot for a ``dense`` loss (so the
"Customize Models" guide's ``LinearClsHead`` + ``L1Loss`` trains), and dense
targets given to an ``index`` loss are an error naming the cause.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["classification_loss", "loss_target_kind", "normalise_topk", "targets_for_loss", "topk_accuracy"]


def loss_target_kind(loss: nn.Module) -> str:
    """The loss's ``target_kind`` (``index``, ``dense`` or ``both``); ``both`` if undeclared."""
    kind = getattr(loss, "target_kind", "both")
    return kind if kind in ("index", "dense", "both") else "both"


def targets_for_loss(loss: nn.Module, scores: Tensor, targets: Tensor) -> Tensor:
    """Convert ``targets`` to the kind ``loss`` accepts.

    Args:
        loss: The loss module (its ``target_kind`` decides).
        scores: Logits (N, C); give the class count and dtype of one-hot targets.
        targets: Class indices (N,) or dense scores (N, C).

    Returns:
        ``targets`` unchanged, or one-hot (N, C) in ``scores``' dtype for a ``dense`` loss.

    Raises:
        ValueError: Dense targets for a loss that only takes class indices.

    """
    kind = loss_target_kind(loss)
    dense = targets.dim() == scores.dim() and targets.is_floating_point()
    if kind == "dense" and not dense:
        return F.one_hot(targets.long().view(-1), scores.shape[-1]).to(scores.dtype)  # (N, C)
    if kind == "index" and dense:
        raise ValueError(
            f"{type(loss).__name__} takes class indices, but the targets are dense scores "
            f"{tuple(targets.shape)} (batch augments such as Mixup/CutMix produce them); use a "
            "loss that accepts dense targets, e.g. CrossEntropyLoss or LabelSmoothLoss"
        )
    return targets


def normalise_topk(topk: int | Sequence[int]) -> tuple[int, ...]:
    """``topk`` as a non-empty tuple of positive ints."""
    ks = (topk,) if isinstance(topk, int) else tuple(topk)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"topk must be positive integers, got {topk!r}")
    return ks


@torch.no_grad()
def topk_accuracy(scores: Tensor, targets: Tensor, topk: Sequence[int] = (1,)) -> dict[str, Tensor]:
    """Top-k accuracy in percent, keyed ``accuracy/top{k}``.

    Args:
        scores: Class scores or logits (N, C).
        targets: Class indices (N,), or dense scores (N, C) whose argmax is the class.
        topk: The k values.

    Returns:
        ``{"accuracy/top1": tensor(87.5), ...}`` (0-dim float tensors).

    Raises:
        ValueError: A k larger than the number of classes.

    """
    num_classes = scores.shape[-1]
    if max(topk) > num_classes:
        raise ValueError(f"top-{max(topk)} accuracy needs at least {max(topk)} classes, scores have {num_classes}")
    labels = targets.argmax(dim=-1) if targets.dim() == scores.dim() else targets  # (N,)
    pred = scores.topk(max(topk), dim=-1).indices  # (N, maxk)
    hits = pred == labels.view(-1, 1).to(pred.device)  # (N, maxk)
    n = max(scores.shape[0], 1)
    return {f"accuracy/top{k}": hits[:, :k].any(dim=1).float().sum() * (100.0 / n) for k in topk}


def classification_loss(
    loss_module: nn.Module,
    cls_score: Tensor,
    targets: Tensor,
    *,
    topk: Sequence[int] = (1,),
    cal_acc: bool = False,
) -> dict[str, Tensor]:
    """The standard classification-head loss dict (MMPretrain ``ClsHead._get_loss``).

    Calls ``loss_module(cls_score, target, avg_factor=N)`` with targets converted by
    :func:`targets_for_loss`, and adds top-k accuracy when ``cal_acc``.

    Returns:
        ``{"loss": total, ["accuracy/top{k}": percent, ...]}``.

    """
    target = targets_for_loss(loss_module, cls_score, targets)
    out = {"loss": loss_module(cls_score, target, avg_factor=cls_score.shape[0])}
    if cal_acc:
        out.update(topk_accuracy(cls_score.detach(), targets, topk))
    return out
