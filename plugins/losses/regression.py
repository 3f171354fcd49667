"""Element-wise regression losses on dense targets: L1 (mean absolute error) and MSE.

Provenance: the ``L1Loss`` of MMPretrain's "Customize Models" guide
(``docs/en/advanced_guides/modules.md``) built on ``weighted_loss``; MMPretrain
itself registers neither. Targets must be dense and shaped like the
predictions; under a classification head the head one-hot encodes class
indices first, so the guide's ``LinearClsHead`` + ``L1Loss`` config trains
(in MMPretrain it fails the guide's own shape assert). As in the guide, the loss
compares raw logits with the targets.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from pretrain.components import BaseLoss, TargetKind
from pretrain.losses import Reduction, resolve_reduction, weighted_loss

__all__ = ["L1Loss", "MSELoss", "l1_loss", "mse_loss"]


def _check_shapes(pred: Tensor, target: Tensor, who: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{who}: predictions {tuple(pred.shape)} and targets {tuple(target.shape)} must "
            "have the same shape (class indices must be one-hot encoded first)"
        )


@weighted_loss
def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Element-wise absolute error ``|pred - target|``."""
    _check_shapes(pred, target, "l1_loss")
    return (pred - target.to(pred.dtype)).abs()


@weighted_loss
def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Element-wise squared error ``(pred - target)²``."""
    _check_shapes(pred, target, "mse_loss")
    return (pred - target.to(pred.dtype)).pow(2)


class _ElementwiseLoss(BaseLoss):
    target_kind: ClassVar[TargetKind] = "dense"

    def __init__(self, *, reduction: Reduction = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
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
        """Return the weighted, reduced, ``loss_weight``-scaled loss.

        Args:
            pred: Predictions, any shape (N, ...).
            target: Dense targets of ``pred``'s shape.
            weight: Element-wise weights, or per-sample weights (N,).
            avg_factor: Divisor of a ``mean`` reduction instead of the element count
                (heads pass N, giving a per-sample sum averaged over samples).
            reduction_override: Replaces ``reduction`` for this call.

        """
        reduction = resolve_reduction(self.reduction, reduction_override)
        loss = self._fn(pred, target, weight, reduction=reduction, avg_factor=avg_factor)
        return self.loss_weight * loss

    @staticmethod
    def _fn(pred: Tensor, target: Tensor, weight: Tensor | None, **kw: object) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    def extra_repr(self) -> str:
        """Summarise the configuration in ``repr``."""
        return f"reduction={self.reduction!r}, loss_weight={self.loss_weight}"


class L1Loss(_ElementwiseLoss):
    """Mean absolute error between predictions and dense targets.

    Args:
        reduction: How to reduce the element-wise loss: none, mean or sum.
        loss_weight: Factor applied to the reduced loss.

    """

    _fn = staticmethod(l1_loss)


class MSELoss(_ElementwiseLoss):
    """Mean squared error between predictions and dense targets.

    Args:
        reduction: How to reduce the element-wise loss: none, mean or sum.
        loss_weight: Factor applied to the reduced loss.

    """

    _fn = staticmethod(mse_loss)
