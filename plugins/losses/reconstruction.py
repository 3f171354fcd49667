"""Pixel reconstruction loss for masked image modelling (MAE, MaskFeat, SimMIM).

Provenance: MMPretrain's ``PixelReconstructionLoss``
(``mmpretrain/models/losses/reconstruction_loss.py``) and the MAE loss of
``facebookresearch/mae/models_mae.py``: element-wise L1 or L2, averaged over each
patch's values, then averaged over the *masked* patches only. Differences: when
a batch has no masked patch the loss is 0 instead of NaN (0/0), and the loss
follows the common loss contract (``weight`` is the mask, ``loss_weight``,
``reduction_override``).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseLoss, TargetKind
from pretrain.losses import resolve_reduction

__all__ = ["PixelReconstructionLoss"]


class PixelReconstructionLoss(BaseLoss):
    """L1/L2 reconstruction loss averaged over masked patches only.

    ``pred`` and ``target`` are (B, L, D) per-patch values (or any equal shapes).
    With a 3-D loss the D values of each patch are averaged first; with a
    ``weight`` (the MAE mask, 1 = masked) the result is
    ``Σ(loss·mask) / Σmask / channel``, otherwise the plain mean. ``Σmask`` is taken
    over the mask as given, before it is broadcast to the loss: SimMIM's (B, 1, H, W)
    pixel mask with ``channel = 3`` gives the mean over the masked pixels' values.

    Args:
        criterion: ``L1`` (absolute error) or ``L2`` (squared error).
        channel: Extra divisor of the masked mean (MMPretrain's ``channel``; default 1).
        reduction: ``mean`` (the masked mean above), ``sum`` (Σ loss·mask) or ``none``
            (the per-patch loss times the mask).
        loss_weight: Multiplier of the final loss.

    """

    target_kind: ClassVar[TargetKind] = "dense"

    def __init__(
        self,
        *,
        criterion: Literal["L1", "L2"] = "L2",
        channel: Annotated[int, Field(gt=0)] | None = None,
        reduction: Literal["none", "mean", "sum"] = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.criterion = criterion
        self.channel = channel if channel is not None else 1
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
        """Return the reconstruction loss.

        Args:
            pred: Predictions, e.g. (B, L, D).
            target: Targets of the same shape.
            weight: Per-patch mask/weights (B, L) (or the loss's shape); 1 = counts.
            avg_factor: Normaliser replacing ``Σweight`` in the mean, if given.
            reduction_override: ``none``, ``mean`` or ``sum`` for this call.

        """
        if pred.shape != target.shape:
            raise ValueError(
                f"PixelReconstructionLoss: pred {tuple(pred.shape)} and target "
                f"{tuple(target.shape)} differ in shape"
            )
        reduction = resolve_reduction(self.reduction, reduction_override)
        target = target.to(pred.dtype)
        if self.criterion == "L1":
            loss = F.l1_loss(pred, target, reduction="none")
        else:
            loss = F.mse_loss(pred, target, reduction="none")
        if loss.dim() == 3:
            loss = loss.mean(dim=-1)  # (B, L): one value per patch
        if weight is None:
            if reduction == "mean":
                out = loss.sum() / avg_factor if avg_factor is not None else loss.mean()
            else:
                out = loss.sum() if reduction == "sum" else loss
            return out * self.loss_weight
        weight = weight.to(loss.dtype)
        if weight.dim() < loss.dim() and weight.shape[0] == loss.shape[0]:
            # A per-sample (N,) weight on an element-wise loss applies to the whole sample.
            weight = weight.view(-1, *[1] * (loss.dim() - 1))
        # MMPretrain divides by the mask as given, before broadcasting: SimMIM's (B, 1, H, W)
        # pixel mask on a (B, 3, H, W) loss counts each pixel once, and `channel = 3` makes
        # the result the mean over masked values.
        given = weight.sum()
        weighted = loss * weight.expand_as(loss)
        if reduction == "none":
            return weighted * self.loss_weight
        if reduction == "sum":
            return weighted.sum() * self.loss_weight
        # A batch with nothing masked has nothing to reconstruct: 0, not 0/0.
        denom = given.clamp(min=1e-12) if avg_factor is None else weighted.new_tensor(avg_factor)
        return weighted.sum() / denom / self.channel * self.loss_weight
