"""AcmeFocalLoss: focal loss (Lin et al., 2017, arXiv:1708.02002) built with ``weighted_loss``.

The seed guide's "add a new loss" step (``L1Loss``). ``weighted_loss`` turns an
element-wise function into one that honours ``weight``, ``reduction`` and
``avg_factor``; the class adds ``loss_weight`` and declares which targets it
takes (``target_kind``), so that a spec pairing it with the wrong head fails
validation instead of the first training step (the guide's L1Loss asserts on
class-index targets).
"""

# [snippet loss]
from __future__ import annotations

from typing import Annotated, ClassVar

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseLoss, TargetKind
from pretrain.losses import Reduction, resolve_reduction, weighted_loss

__all__ = ["AcmeFocalLoss", "focal_loss"]


@weighted_loss
def focal_loss(pred: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """Per-sample focal loss of logits (N, C) against class indices (N,) or scores (N, C)."""
    log_p = pred.log_softmax(dim=-1)  # (N, C)
    if target.dim() == 1:  # class indices -> one-hot
        target = F.one_hot(target.long(), pred.shape[-1]).to(log_p.dtype)
    focus = (1.0 - log_p.exp()).pow(gamma)  # down-weights well-classified samples
    return -(target * focus * log_p).sum(dim=-1)  # (N,)


class AcmeFocalLoss(BaseLoss):
    """Focal loss for classification: cross-entropy scaled by ``(1 - p_target) ** gamma``.

    With ``gamma = 0`` it is cross-entropy. Takes class indices or dense
    (one-hot, mixed) targets.

    Args:
        gamma: Focusing exponent; larger values down-weight easy samples more.
        reduction: How per-sample losses are combined: none, mean or sum.
        loss_weight: Factor applied to the reduced loss.
    """

    target_kind: ClassVar[TargetKind] = "both"

    def __init__(
        self,
        *,
        gamma: Annotated[float, Field(ge=0)] = 2.0,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """Return the weighted, reduced and ``loss_weight``-scaled focal loss."""
        reduction = resolve_reduction(self.reduction, reduction_override)
        loss = focal_loss(pred, target, weight, reduction=reduction, avg_factor=avg_factor, gamma=self.gamma)
        return self.loss_weight * loss
# [/snippet]
