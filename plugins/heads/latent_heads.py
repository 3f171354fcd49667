"""Latent-space heads: predict one view's features from the other's, or decorrelate them.

Provenance: MMPretrain's ``LatentPredictHead`` (BYOL, SimSiam) and
``LatentCrossCorrelationHead`` (Barlow Twins), ``mmpretrain/models/heads/latent_heads.py``.
Same fields and losses; ``loss`` returns ``{"loss": ...}`` like every pretrain head.

Difference in ``LatentCrossCorrelationHead`` (see ``docs/differences.md``): its
batch norm uses the statistics of the *global* batch when training distributed
(as the Barlow Twins paper, whose code converts the model to SyncBN), and the
cross-correlation matrix is summed over ranks with a gradient
(:func:`pretrain.distributed.all_reduce`). MMPretrain normalises each rank's rows
with that rank's statistics and sums the matrix with a plain ``all_reduce`` that
carries no gradient, so each rank's parameters receive only ``1 / world_size`` of
their gradient (lightly ``#1977``). Here 2 processes equal 1 process on the same
global batch.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseHead, LossRef, NeckRef, build_component
from pretrain.distributed import all_gather_sizes, all_reduce
from pretrain_builtins.layers import apply_norm, build_norm1d

__all__ = ["LatentCrossCorrelationHead", "LatentPredictHead"]


_COSINE: dict[str, Any] = {"type": "CosineSimilarityLoss"}
_CROSS_CORRELATION: dict[str, Any] = {"type": "CrossCorrelationLoss"}


def _last(feats: Tensor | tuple[Tensor, ...] | list[Tensor]) -> Tensor:
    return feats[-1] if isinstance(feats, tuple | list) else feats


class LatentPredictHead(BaseHead):
    """Predict the target features from the input features: ``loss(predictor(input), target)``.

    The target is detached (no gradient flows into it). ``predict(input)`` returns the
    predictor's output.

    Args:
        loss: Similarity loss between prediction and target (``CosineSimilarityLoss``).
        predictor: A neck (e.g. ``NonLinearNeck`` with ``with_avg_pool = false``).

    """

    supplies_targets: ClassVar[frozenset[str]] = frozenset({"dense"})
    default_init: ClassVar[list[dict[str, Any]]] = []
    example_config: ClassVar[dict[str, Any]] = {
        "predictor": {"type": "NonLinearNeck", "in_channels": 8, "hid_channels": 16, "out_channels": 8,
                      "with_avg_pool": False, "with_last_bn": False},
    }

    def __init__(self, *, loss: LossRef = _COSINE, predictor: NeckRef) -> None:
        super().__init__()
        self.loss_module = build_component("loss", loss)
        self.predictor = build_component("neck", predictor)
        self.in_channels = getattr(self.predictor, "in_channels", None)
        self.out_channels = getattr(self.predictor, "out_channels", None)

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: online projections and target projections (N, C)."""
        c_in, c_out = int(self.in_channels or 8), int(self.out_channels or 8)
        return (torch.randn(batch_size, c_in), torch.randn(batch_size, c_out))

    def predict(self, feats: Tensor | tuple[Tensor, ...]) -> Tensor:  # type: ignore[override]
        """The predictor's output (N, C) for ``feats`` (N, C_in) (or a neck's tuple)."""
        out: Tensor = self.predictor((_last(feats),))[0]
        return out

    def loss(self, input: Tensor, target: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        """The loss of ``predictor(input)`` against ``target`` (detached): ``{"loss": ...}``."""
        return {"loss": self.loss_module(self.predict(input), target.detach())}


class LatentCrossCorrelationHead(BaseHead):
    """Barlow Twins: the cross-correlation of the two views' batch-normalised features.

    ``c = bn(input)ᵀ · bn(target) / N`` (D, D) over the global batch of N rows, then
    ``loss(c)`` (``CrossCorrelationLoss``). ``predict(input)`` returns the normalised
    features (running statistics in eval mode).

    Args:
        in_channels: Width D of the projections.
        loss: Loss of the (D, D) cross-correlation matrix.

    """

    supplies_targets: ClassVar[frozenset[str]] = frozenset({"dense"})
    default_init: ClassVar[list[dict[str, Any]]] = []
    example_config: ClassVar[dict[str, Any]] = {"in_channels": 8}

    def __init__(
        self, *, in_channels: Annotated[int, Field(gt=0)],
        loss: LossRef = _CROSS_CORRELATION,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        # Non-affine batch norm (state-dict keys bn.running_mean/var as MMPretrain);
        # SyncBN so that distributed training normalises over the global batch.
        self.bn = build_norm1d("SyncBN", in_channels, affine=False)
        self.loss_module = build_component("loss", loss)

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: the two views' projections (N, in_channels)."""
        return (torch.randn(batch_size, self.in_channels), torch.randn(batch_size, self.in_channels))

    def predict(self, feats: Tensor | tuple[Tensor, ...]) -> Tensor:  # type: ignore[override]
        """Batch-normalised features (N, D)."""
        return apply_norm(self.bn, _last(feats))

    def cross_correlation(self, input: Tensor, target: Tensor) -> Tensor:
        """The (D, D) cross-correlation matrix of the global batch (summed over ranks)."""
        if input.shape != target.shape or input.dim() != 2 or input.shape[1] != self.in_channels:
            raise ValueError(f"LatentCrossCorrelationHead expects two (N, {self.in_channels}) inputs, "
                             f"got {tuple(input.shape)} and {tuple(target.shape)}")
        total = sum(all_gather_sizes(input.shape[0], input.device))
        local = apply_norm(self.bn, input).T @ apply_norm(self.bn, target) / total  # (D, D)
        return all_reduce(local)

    def loss(self, input: Tensor, target: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        """The loss of the two views' cross-correlation matrix: ``{"loss": ...}``."""
        return {"loss": self.loss_module(self.cross_correlation(input, target))}
