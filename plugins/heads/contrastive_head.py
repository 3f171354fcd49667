"""Contrastive heads: InfoNCE over given positives/negatives, and MoCo v3's in-batch InfoNCE.

Provenance: MMPretrain's ``ContrastiveHead`` (``heads/contrastive_head.py``; SimCLR,
MoCo v2) and ``MoCoV3Head`` (``heads/mocov3_head.py``; Chen et al., 2021,
arXiv:2104.02057). Same fields and losses. Differences: ``loss`` returns
``{"loss": ...}`` like every pretrain head; ``MoCoV3Head`` gathers the keys with
:func:`pretrain.distributed.all_gather` and offsets its labels by the rows of the
ranks before this one, so ranks may hold different batch sizes; ``predict`` exists
(candidate probabilities, predicted features) so the heads can be inspected and
shape-checked.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseHead, LossRef, NeckRef, build_component
from pretrain.distributed import all_gather, rank_offset

__all__ = ["ContrastiveHead", "MoCoV3Head"]

_CE: dict[str, Any] = {"type": "CrossEntropyLoss"}


def _last(feats: Tensor | tuple[Tensor, ...] | list[Tensor]) -> Tensor:
    return feats[-1] if isinstance(feats, tuple | list) else feats


class ContrastiveHead(BaseHead):
    """InfoNCE: classify the positive among the negatives, ``loss(cat(pos, neg) / τ, 0)``.

    ``loss(pos, neg)`` takes similarities: ``pos`` (N, 1), one positive per row, and
    ``neg`` (N, K). ``predict(pos, neg)`` returns the softmax over the candidates
    (N, 1 + K), the positive first.

    Args:
        loss: Classification loss over the logits, with the positive at index 0.
        temperature: τ, the logits are the similarities divided by it.

    """

    supplies_targets: ClassVar[frozenset[str]] = frozenset({"index"})
    default_init: ClassVar[list[dict[str, Any]]] = []
    example_config: ClassVar[dict[str, Any]] = {"temperature": 0.1}

    def __init__(self, *, loss: LossRef = _CE, temperature: Annotated[float, Field(gt=0)] = 0.1) -> None:
        super().__init__()
        self.loss_module = build_component("loss", loss)
        self.temperature = temperature

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: cosine similarities of one positive and 6 negatives per row."""
        return (torch.rand(batch_size, 1) * 2 - 1, torch.rand(batch_size, 6) * 2 - 1)

    def logits(self, pos: Tensor, neg: Tensor | None = None) -> Tensor:
        """``cat(pos, neg) / τ`` (N, 1 + K)."""
        pos = _last(pos)
        both = pos if neg is None else torch.cat([pos, neg], dim=1)
        return both / self.temperature

    def loss(self, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        """InfoNCE of positives (N, 1) among negatives (N, K): ``{"loss": ...}``."""
        if pos.dim() != 2 or pos.shape[1] != 1 or neg.dim() != 2 or neg.shape[0] != pos.shape[0]:
            raise ValueError(f"ContrastiveHead expects pos (N, 1) and neg (N, K), got "
                             f"{tuple(pos.shape)} and {tuple(neg.shape)}")
        logits = self.logits(pos, neg)  # (N, 1 + K)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return {"loss": self.loss_module(logits, labels)}

    def predict(self, pos: Tensor | tuple[Tensor, ...], neg: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Probability of each candidate (N, 1 + K), the positive first."""
        return self.logits(_last(pos), neg).softmax(dim=1)


class MoCoV3Head(BaseHead):
    """MoCo v3: predict the momentum encoder's key of the *other* view among the global batch.

    ``loss(base_out, momentum_out)``: queries ``predictor(base_out)`` (N, C) and keys
    ``momentum_out`` (N, C), both L2-normalised; the keys of every rank are gathered
    (no gradient), ``logits = q · kᵀ / τ`` (N, N_global) and the label of row i is its
    own key. ``predict`` returns the normalised predictions.

    Args:
        predictor: A neck (e.g. ``NonLinearNeck``) mapping projections to predictions.
        loss: Classification loss over the logits (MoCo v3 scales it by ``2τ``:
            ``loss_weight = 2 * temperature``).
        temperature: τ of the logits.

    """

    supplies_targets: ClassVar[frozenset[str]] = frozenset({"index"})
    default_init: ClassVar[list[dict[str, Any]]] = []
    example_config: ClassVar[dict[str, Any]] = {
        "predictor": {"type": "NonLinearNeck", "in_channels": 8, "hid_channels": 16, "out_channels": 8,
                      "with_avg_pool": False, "with_last_bn_affine": False},
        "loss": {"type": "CrossEntropyLoss", "loss_weight": 0.4},
        "temperature": 0.2,
    }

    def __init__(
        self,
        *,
        predictor: NeckRef,
        loss: LossRef = _CE,
        temperature: Annotated[float, Field(gt=0)] = 1.0,
    ) -> None:
        super().__init__()
        self.predictor = build_component("neck", predictor)
        self.loss_module = build_component("loss", loss)
        self.temperature = temperature
        self.in_channels = getattr(self.predictor, "in_channels", None)

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: projections and momentum keys (N, in_channels)."""
        c = int(self.in_channels or 8)
        return (torch.randn(batch_size, c), torch.randn(batch_size, c))

    def predict(self, feats: Tensor | tuple[Tensor, ...]) -> Tensor:  # type: ignore[override]
        """L2-normalised predictions (N, C) of projections (N, C_in) (or a neck's tuple)."""
        return F.normalize(self.predictor((_last(feats),))[0], dim=1)

    def loss(self, base_out: Tensor, momentum_out: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        """InfoNCE of this rank's queries against every rank's keys: ``{"loss": ...}``."""
        pred = self.predict(base_out)  # (n, C)
        with torch.no_grad():
            target = all_gather(F.normalize(momentum_out.detach(), dim=1))  # (N, C)
        logits = pred @ target.T / self.temperature  # (n, N)
        offset = rank_offset(pred.shape[0], pred.device)
        labels = torch.arange(pred.shape[0], device=pred.device) + offset  # (n,)
        return {"loss": self.loss_module(logits, labels)}
