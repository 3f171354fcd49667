"""Cross-entropy loss: softmax on class indices or soft targets, or sigmoid (BCE).

Provenance: MMPretrain ``models/losses/cross_entropy_loss.py``
(``cross_entropy``, ``soft_cross_entropy``, ``binary_cross_entropy``), with the
weight / reduction / ``avg_factor`` / ``loss_weight`` semantics of
:mod:`pretrain.losses`.

Differences from MMPretrain (all deliberate):

* soft targets need no ``use_soft`` flag: a floating (N, C) target is taken as
  class probabilities, an integer (N,) target as class indices;
* ``use_sigmoid`` accepts class indices and one-hots them (MMPretrain asserts
  ``pred.dim() == label.dim()``);
* ``label_smoothing`` is torch's (``F.cross_entropy(label_smoothing=...)``),
  which MMPretrain does not expose; with ``use_sigmoid`` it is a validation
  error (use ``LabelSmoothLoss`` with ``mode="multi_label"``);
* ``pos_weight`` without ``use_sigmoid`` is a validation error (MMPretrain
  silently ignores it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseLoss, TargetKind
from pretrain.losses import Reduction, resolve_reduction, weight_reduce_loss

__all__ = ["CrossEntropyLoss", "as_dense_target", "check_target"]


def check_target(pred: Tensor, target: Tensor, who: str) -> bool:
    """Return True for a dense (probability) target, False for class indices.

    Args:
        pred: Scores (N, C).
        target: Class indices (N,) (integer) or dense scores of ``pred``'s shape.
        who: Loss name for the error message.

    Raises:
        ValueError: ``target`` is neither.

    """
    if target.dim() == pred.dim() and target.shape == pred.shape:
        return True
    if target.dim() == pred.dim() - 1 and not target.is_floating_point():
        if target.shape[0] != pred.shape[0]:
            raise ValueError(f"{who}: {pred.shape[0]} predictions but {target.shape[0]} targets")
        return False
    raise ValueError(
        f"{who}: target of shape {tuple(target.shape)} ({target.dtype}) fits neither class "
        f"indices (N,) of an integer dtype nor dense scores {tuple(pred.shape)} for "
        f"predictions of shape {tuple(pred.shape)}"
    )


def as_dense_target(pred: Tensor, target: Tensor, who: str) -> Tensor:
    """Return ``target`` as dense scores shaped like ``pred`` (one-hot for indices)."""
    if check_target(pred, target, who):
        return target.to(pred.dtype)
    return F.one_hot(target.long(), pred.shape[-1]).to(pred.dtype)


class CrossEntropyLoss(BaseLoss):
    """Cross-entropy on logits: softmax with index or soft targets, or sigmoid (BCE).

    Targets may be class indices (N,) or dense class scores (N, C) (one-hot,
    Mixup/CutMix mixtures, smoothed labels); both work in either mode.

    Args:
        use_sigmoid: Binary cross-entropy with logits per class (multi-label)
            instead of softmax; index targets are one-hot encoded.
        reduction: How to reduce the per-sample loss: none, mean or sum.
        loss_weight: Factor applied to the reduced loss.
        class_weight: Per-class weights (length C), as torch's ``weight``.
        pos_weight: Per-class weights of positive examples (``use_sigmoid`` only).
        label_smoothing: Torch's softmax label smoothing in [0, 1):
            targets become (1 - ε)·y + ε/C.

    """

    target_kind: ClassVar[TargetKind] = "both"

    def __init__(
        self,
        *,
        use_sigmoid: bool = False,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        class_weight: list[float] | None = None,
        pos_weight: list[float] | None = None,
        label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    ) -> None:
        super().__init__()
        for name, msg in self.spec_issues(
            {
                "use_sigmoid": use_sigmoid,
                "pos_weight": pos_weight,
                "label_smoothing": label_smoothing,
            }
        ):
            raise ValueError(f"CrossEntropyLoss.{name}: {msg}")
        self.use_sigmoid = use_sigmoid
        self.reduction = resolve_reduction(reduction, None)
        self.loss_weight = loss_weight
        self.label_smoothing = label_smoothing
        # Buffers (not persistent) so they follow .to(device) but stay out of checkpoints.
        self.class_weight: Tensor | None
        self.pos_weight: Tensor | None
        self.register_buffer("class_weight", _tensor(class_weight), persistent=False)
        self.register_buffer("pos_weight", _tensor(pos_weight), persistent=False)

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """Cross-field checks: options that only make sense with or without sigmoid."""
        if params.get("pos_weight") is not None and not params.get("use_sigmoid"):
            yield "pos_weight", "only applies with use_sigmoid = true (binary cross-entropy)"
        if params.get("label_smoothing") and params.get("use_sigmoid"):
            yield (
                "label_smoothing",
                "is softmax label smoothing; with use_sigmoid = true use "
                'LabelSmoothLoss(mode = "multi_label", use_sigmoid = true) instead',
            )

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """Return the weighted, reduced, ``loss_weight``-scaled loss.

        Args:
            pred: Logits (N, C).
            target: Class indices (N,) or dense scores (N, C).
            weight: Per-sample weights (N,).
            avg_factor: Divisor of a ``mean`` reduction (heads pass N).
            reduction_override: Replaces ``reduction`` for this call.

        """
        reduction = resolve_reduction(self.reduction, reduction_override)
        dense = check_target(pred, target, "CrossEntropyLoss")
        num_classes = pred.shape[-1]
        for name, value in (("class_weight", self.class_weight), ("pos_weight", self.pos_weight)):
            if value is not None and value.numel() != num_classes:
                raise ValueError(
                    f"CrossEntropyLoss.{name} has {value.numel()} entries but the predictions "
                    f"have {num_classes} classes"
                )
        class_weight = None if self.class_weight is None else self.class_weight.to(pred.dtype)
        if self.use_sigmoid:
            dense_target = as_dense_target(pred, target, "CrossEntropyLoss")
            pos_weight = None if self.pos_weight is None else self.pos_weight.to(pred.dtype)
            # (N, C): one binary problem per class.
            loss = F.binary_cross_entropy_with_logits(
                pred,
                dense_target,
                weight=class_weight.expand_as(pred) if class_weight is not None else None,
                pos_weight=pos_weight,
                reduction="none",
            )
        else:
            # (N,): index targets pick one class; dense targets are probabilities.
            loss = F.cross_entropy(
                pred,
                target.to(pred.dtype) if dense else target.long(),
                weight=class_weight,
                reduction="none",
                label_smoothing=self.label_smoothing,
            )
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)

    def extra_repr(self) -> str:
        """Summarise the configuration in ``repr``."""
        return (
            f"use_sigmoid={self.use_sigmoid}, reduction={self.reduction!r}, "
            f"loss_weight={self.loss_weight}, label_smoothing={self.label_smoothing}"
        )


def _tensor(values: list[float] | None) -> Tensor | None:
    return None if values is None else torch.tensor(values, dtype=torch.float32)
