"""Loss utilities: element-wise weighting and reduction with MMPretrain's semantics.

Provenance: ``mmpretrain/models/losses/utils.py`` (``reduce_loss``,
``weight_reduce_loss``, ``weighted_loss``). A loss computes an element-wise (or
per-sample) loss tensor, then:

1. multiplies it by ``weight`` (if given);
2. without ``avg_factor``: reduces with ``reduction`` (``none`` / ``mean`` / ``sum``);
3. with ``avg_factor``: ``mean`` -> ``loss.sum() / avg_factor``, ``none`` -> unchanged.

Loss classes then multiply by their ``loss_weight``; ``reduction_override``
(``none`` / ``mean`` / ``sum``) replaces the configured ``reduction`` for one call.

Deliberate differences from MMPretrain (both are crashes or silent errors there):

* ``reduction="sum"`` with an ``avg_factor`` returns the plain sum (``avg_factor``
  is a normaliser for *means*; a sum has none). MMPretrain raises ``ValueError``,
  so ``CrossEntropyLoss(reduction="sum")`` under ``ClsHead`` (which always passes
  ``avg_factor=N``) crashes at the first step.
* A 1-D per-sample ``weight`` (N,) on a loss of shape (N, C, ...) is applied per
  sample (reshaped to (N, 1, ...)). MMPretrain multiplies directly, which fails,
  or silently weights *columns* when N == C.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

from torch import Tensor

__all__ = [
    "REDUCTIONS",
    "Reduction",
    "reduce_loss",
    "resolve_reduction",
    "weight_reduce_loss",
    "weighted_loss",
]

Reduction: TypeAlias = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[Reduction, ...] = ("none", "mean", "sum")


def _check(reduction: str) -> Reduction:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of none, mean, sum; got {reduction!r}")
    return reduction


def resolve_reduction(reduction: str, reduction_override: str | None) -> Reduction:
    """Return the reduction for one call: ``reduction_override`` if given, else ``reduction``.

    Raises:
        ValueError: Either value is not ``none``, ``mean`` or ``sum``.

    """
    if reduction_override is not None:
        return _check(reduction_override)
    return _check(reduction)


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """Reduce an element-wise loss with ``none``, ``mean`` or ``sum``."""
    reduction = _check(reduction)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _broadcast_weight(loss: Tensor, weight: Tensor) -> Tensor:
    # A per-sample weight (N,) on a (N, C, ...) loss weights samples, not columns.
    if weight.dim() == 1 and loss.dim() > 1 and weight.shape[0] == loss.shape[0]:
        return weight.reshape(-1, *([1] * (loss.dim() - 1)))
    return weight


def weight_reduce_loss(
    loss: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Apply an element-wise ``weight``, then reduce (MMPretrain semantics).

    Args:
        loss: Element-wise (or per-sample) loss.
        weight: Multiplied into ``loss`` first; a 1-D (N,) weight on a (N, C, ...)
            loss is applied per sample. Cast to ``loss``'s dtype.
        reduction: ``none``, ``mean`` or ``sum``.
        avg_factor: Divisor replacing the element count of ``mean`` (``loss.sum() /
            avg_factor``). Ignored by ``none`` and by ``sum`` (a sum needs no
            normaliser; MMPretrain raises here).

    Returns:
        The weighted, reduced loss.

    Raises:
        ValueError: Unknown ``reduction``.

    """
    reduction = _check(reduction)
    if weight is not None:
        loss = loss * _broadcast_weight(loss, weight.to(loss.dtype))
    if avg_factor is None or reduction == "sum":
        return reduce_loss(loss, reduction)
    if reduction == "mean":
        return loss.sum() / avg_factor
    return loss


def weighted_loss(loss_func: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Turn an element-wise ``loss_func(pred, target, **kwargs)`` into a weighted, reduced loss.

    The wrapped function has the signature ``(pred, target, weight=None,
    reduction="mean", avg_factor=None, **kwargs)`` and goes through
    :func:`weight_reduce_loss`.

    Example:
        >>> import torch
        >>> @weighted_loss
        ... def l1_loss(pred, target):
        ...     return (pred - target).abs()
        >>> pred = torch.tensor([0.0, 2.0, 3.0]); target = torch.tensor([1.0, 1.0, 1.0])
        >>> l1_loss(pred, target)
        tensor(1.3333)
        >>> l1_loss(pred, target, reduction="sum")
        tensor(4.)
        >>> l1_loss(pred, target, avg_factor=2)
        tensor(2.)

    """

    @functools.wraps(loss_func)
    def wrapper(
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        reduction: str = "mean",
        avg_factor: float | Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        loss = loss_func(pred, target, **kwargs)
        return weight_reduce_loss(loss, weight, reduction, avg_factor)

    return wrapper
