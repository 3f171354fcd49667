"""Label-smoothing cross-entropy (Szegedy et al., 2016, "Rethinking the Inception Architecture").

Provenance: MMPretrain ``models/losses/label_smooth_loss.py``. Index or dense
targets are turned into one-hot-like scores, smoothed, and passed to
:class:`~pretrain_builtins.losses.cross_entropy.CrossEntropyLoss` (soft softmax
CE, or BCE with ``use_sigmoid``). Modes, with ε = ``label_smooth_val`` and K classes:

* ``original``: y' = (1 - ε)·y + ε/K;
* ``classy_vision``: the same with ε' = ε / (1 + ε) (ClassyVision's convention);
* ``multi_label``: y' = 1 - ε for positives, ε for negatives, i.e. (1 - 2ε)·y + ε
  (meant for ``use_sigmoid``, which is its default).

Differences from MMPretrain: ``label_smooth_val = 0`` (an int) is accepted;
``num_classes`` is never written back from the first batch (MMPretrain mutates
it and then rejects a later batch of another width); shape errors are
``ValueError`` with both shapes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseLoss, TargetKind
from pretrain.losses import Reduction, resolve_reduction
from pretrain_builtins.losses.cross_entropy import CrossEntropyLoss, as_dense_target

__all__ = ["LabelSmoothLoss"]


class LabelSmoothLoss(BaseLoss):
    """Cross-entropy against smoothed labels (modes original, classy_vision, multi_label).

    Args:
        label_smooth_val: Smoothing ε in [0, 1).
        num_classes: Number of classes; checked against the predictions when
            given, inferred from them otherwise.
        use_sigmoid: Binary cross-entropy per class instead of softmax; default
            true for ``multi_label`` and false otherwise.
        mode: original: (1-ε)y+ε/K; classy_vision: same with ε/(1+ε);
            multi_label: 1-ε for positives, ε for negatives.
        reduction: How to reduce the per-sample loss: none, mean or sum.
        loss_weight: Factor applied to the reduced loss.
        class_weight: Per-class weights (length C).
        pos_weight: Per-class weights of positive examples (``use_sigmoid`` only).

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"label_smooth_val": 0.1}

    target_kind: ClassVar[TargetKind] = "both"

    def __init__(
        self,
        *,
        label_smooth_val: Annotated[float, Field(ge=0, lt=1)],
        num_classes: Annotated[int, Field(gt=0)] | None = None,
        use_sigmoid: bool | None = None,
        mode: Literal["original", "classy_vision", "multi_label"] = "original",
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        class_weight: list[float] | None = None,
        pos_weight: list[float] | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= label_smooth_val < 1:
            raise ValueError(f"label_smooth_val must be in [0, 1), got {label_smooth_val}")
        for name, msg in self.spec_issues({"use_sigmoid": use_sigmoid, "mode": mode, "pos_weight": pos_weight}):
            raise ValueError(f"LabelSmoothLoss.{name}: {msg}")
        if mode == "multi_label" and use_sigmoid is False:
            warnings.warn(
                "LabelSmoothLoss(mode='multi_label') with use_sigmoid=False applies softmax to "
                "multi-label targets; set use_sigmoid=True for binary cross-entropy",
                stacklevel=2,
            )
        self.label_smooth_val = float(label_smooth_val)
        self.num_classes = num_classes
        self.mode = mode
        self.reduction = resolve_reduction(reduction, None)
        self.loss_weight = loss_weight
        self.eps = self.label_smooth_val
        if mode == "classy_vision":
            self.eps = self.label_smooth_val / (1 + self.label_smooth_val)
        if use_sigmoid is None:
            use_sigmoid = mode == "multi_label"
        self.use_sigmoid = use_sigmoid
        # loss_weight stays 1 inside: it is applied once, here.
        self.ce = CrossEntropyLoss(
            use_sigmoid=use_sigmoid,
            reduction=reduction,
            class_weight=class_weight,
            pos_weight=pos_weight,
        )

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """Cross-field checks on the sigmoid-only options."""
        sigmoid = params.get("use_sigmoid")
        if sigmoid is None:
            sigmoid = params.get("mode") == "multi_label"
        if params.get("pos_weight") is not None and not sigmoid:
            yield "pos_weight", "only applies with use_sigmoid = true (binary cross-entropy)"

    def smooth(self, dense: Tensor) -> Tensor:
        """Smooth one-hot-like scores (N, K) according to ``mode``."""
        if self.mode == "multi_label":
            return torch.where(dense > 0, 1 - self.eps, self.eps).to(dense.dtype)
        return dense * (1 - self.eps) + self.eps / dense.shape[-1]

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """Return the loss against smoothed targets.

        Args:
            pred: Logits (N, C).
            target: Class indices (N,) or (N, 1), or dense scores (N, C).
            weight: Per-sample weights (N,).
            avg_factor: Divisor of a ``mean`` reduction (heads pass N).
            reduction_override: Replaces ``reduction`` for this call.

        """
        if self.num_classes is not None and pred.shape[-1] != self.num_classes:
            raise ValueError(
                f"LabelSmoothLoss: num_classes is {self.num_classes} but the predictions "
                f"have {pred.shape[-1]} classes ({tuple(pred.shape)})"
            )
        if target.dim() == 2 and target.shape[1] == 1 and not target.is_floating_point():
            target = target.view(-1)  # (N, 1) indices, as MMPretrain accepts
        smoothed = self.smooth(as_dense_target(pred, target, "LabelSmoothLoss"))  # (N, C)
        reduction = resolve_reduction(self.reduction, reduction_override)
        loss = self.ce(pred, smoothed, weight, avg_factor, reduction)
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        """Summarise the configuration in ``repr``."""
        return (
            f"label_smooth_val={self.label_smooth_val}, mode={self.mode!r}, "
            f"use_sigmoid={self.use_sigmoid}, loss_weight={self.loss_weight}"
        )
