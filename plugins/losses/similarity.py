"""Losses of siamese self-supervision: negative cosine similarity and Barlow Twins' cross-correlation.

Provenance: MMPretrain's ``CosineSimilarityLoss``
(``mmpretrain/models/losses/cosine_similarity_loss.py``; BYOL, SimSiam) and
``CrossCorrelationLoss`` (``cross_correlation_loss.py``; Zbontar et al., 2021,
"Barlow Twins", arXiv:2103.03230). Same fields and values; on top, both follow the
loss contract of every pretrain loss (``weight``, ``reduction``, ``avg_factor``,
``loss_weight``):

* ``CosineSimilarityLoss`` is per sample, ``shift_factor - scale_factor * cos(pred, target)``,
  averaged by default. MMPretrain's ``mask`` argument is ``weight=mask,
  avg_factor=mask.sum()`` here.
* ``CrossCorrelationLoss`` takes the (D, D) cross-correlation matrix. Its per-row terms
  ``(c_ii - 1)² + lambd · Σ_{j≠i} c_ij²`` are summed by default, which is MMPretrain's
  value; ``reduction = "mean"`` divides by D. The computation does not modify the
  matrix in place (MMPretrain's ``diagonal().add_(-1)`` writes into its input).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseLoss, TargetKind
from pretrain.losses import Reduction, resolve_reduction, weighted_loss

__all__ = ["CosineSimilarityLoss", "CrossCorrelationLoss", "cosine_similarity_loss", "cross_correlation_loss"]


@weighted_loss
def cosine_similarity_loss(pred: Tensor, target: Tensor, shift_factor: float = 0.0,
                           scale_factor: float = 1.0) -> Tensor:
    """Per-sample ``shift_factor - scale_factor * cos(pred, target)`` over the last dim (N, ...)."""
    if pred.shape != target.shape:
        raise ValueError(f"CosineSimilarityLoss: pred {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} must have the same shape")
    cos = (F.normalize(pred, dim=-1) * F.normalize(target.to(pred.dtype), dim=-1)).sum(dim=-1)
    return shift_factor - scale_factor * cos


@weighted_loss
def cross_correlation_loss(pred: Tensor, target: Tensor | None = None, lambd: float = 0.0051) -> Tensor:
    """Per-row Barlow Twins terms (R,) of the first R rows (R, D) of a cross-correlation matrix.

    Row i: ``(c_ii - t_ii)² + lambd · Σ_{j≠i} (c_ij - t_ij)²`` with ``t`` the identity
    unless ``target`` gives another matrix of ``pred``'s shape. Usually R = D.
    """
    if pred.dim() != 2 or pred.shape[0] > pred.shape[1]:
        raise ValueError(f"CrossCorrelationLoss expects a (D, D) matrix (or its first rows), "
                         f"got {tuple(pred.shape)}")
    eye = torch.eye(*pred.shape, dtype=pred.dtype, device=pred.device)  # (R, D)
    goal = eye if target is None else target.to(pred.dtype)
    sq = (pred - goal).pow(2)  # (R, D)
    on_diag = (sq * eye).sum(dim=1)  # (R,)
    off_diag = (sq * (1 - eye)).sum(dim=1)  # (R,)
    return on_diag + lambd * off_diag


class CosineSimilarityLoss(BaseLoss):
    """Negative cosine similarity between predictions and targets (BYOL, SimSiam).

    Per sample ``shift_factor - scale_factor * cos(pred, target)``; with the defaults
    it is ``-cos`` (BYOL's ``2 - 2·cos`` is ``shift_factor = 2, scale_factor = 2``).

    Args:
        shift_factor: Constant added to every sample's loss.
        scale_factor: Factor of the cosine similarity.
        reduction: How per-sample losses are combined: none, mean or sum.
        loss_weight: Factor applied to the reduced loss.

    """

    target_kind: ClassVar[TargetKind] = "dense"
    example_config: ClassVar[dict[str, Any]] = {}
    #: One sample's prediction for the conformance kit: an 8-d feature.
    example_input: ClassVar[tuple[int, ...]] = (8,)

    def __init__(
        self,
        *,
        shift_factor: float = 0.0,
        scale_factor: float = 1.0,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.shift_factor = shift_factor
        self.scale_factor = scale_factor
        self.reduction = resolve_reduction(reduction, None)
        self.loss_weight = loss_weight

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """Loss of ``pred`` (N, D) against ``target`` (N, D) (per-sample ``weight`` (N,))."""
        reduction = resolve_reduction(self.reduction, reduction_override)
        loss = cosine_similarity_loss(pred, target, weight, reduction=reduction, avg_factor=avg_factor,
                                      shift_factor=self.shift_factor, scale_factor=self.scale_factor)
        return self.loss_weight * loss


class CrossCorrelationLoss(BaseLoss):
    """Barlow Twins' redundancy-reduction loss on a (D, D) cross-correlation matrix.

    ``Σ_i (c_ii - 1)² + lambd · Σ_i Σ_{j≠i} c_ij²``: the diagonal is pulled to 1
    (invariance), the off-diagonal to 0 (decorrelation). ``pred`` is the matrix;
    ``target`` is optional (the identity by default).

    Args:
        lambd: Weight of the off-diagonal terms (the paper's λ = 0.0051).
        reduction: How the per-row terms are combined: sum (MMPretrain's value), mean or none.
        loss_weight: Factor applied to the reduced loss.

    """

    target_kind: ClassVar[TargetKind] = "dense"
    example_config: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        *,
        lambd: Annotated[float, Field(ge=0)] = 0.0051,
        reduction: Reduction = "sum",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.lambd = lambd
        self.reduction = resolve_reduction(reduction, None)
        self.loss_weight = loss_weight

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: a square correlation matrix with one row per "sample"."""
        return (torch.randn(batch_size, batch_size).tanh(), None)

    def forward(
        self,
        pred: Tensor,
        target: Tensor | None = None,
        weight: Tensor | None = None,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """Loss of the cross-correlation matrix ``pred`` (D, D); ``weight`` (D,) weights rows."""
        reduction = resolve_reduction(self.reduction, reduction_override)
        loss = cross_correlation_loss(pred, target, weight, reduction=reduction, avg_factor=avg_factor,
                                      lambd=self.lambd)
        return self.loss_weight * loss
