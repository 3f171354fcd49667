"""BEiT pretraining heads: classify each masked patch into the tokenizer's visual words.

Provenance: MMPretrain's ``BEiTV1Head`` and ``BEiTV2Head``
(``mmpretrain/models/heads/beitv{1,2}_head.py``), same keys (``cls_head``). Differences:
both return ``{"loss": ...}`` (BEiT v2 also logs ``loss_1``, the last layer's, and
``loss_2``, the patch-aggregation one; ``loss`` is their sum, which MMEngine optimises),
and BEiT v2's head takes the neck's ``(x, x_cls_pt)`` tuple as one argument.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseHead, LossRef, build_component

__all__ = ["BEiTV1Head", "BEiTV2Head"]

_INIT: list[dict[str, Any]] = [{"type": "TruncNormal", "layer": "Linear", "std": 0.02, "bias": 0.0}]


def _token_ids(target: Tensor) -> Tensor:
    """Tokenizer output -> ids (B, L): DALL-E's logits (B, vocab, h, w) are arg-maxed."""
    if target.dim() == 4:
        target = target.argmax(dim=1)
    return target.flatten(1).long()


def _flat_mask(mask: Tensor | None, like: Tensor) -> Tensor:
    """(B, h, w) or (B, L) mask -> bool (B, L); None masks every patch."""
    if mask is None:
        return torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
    return mask.flatten(1).bool()


class _BEiTHead(BaseHead):
    supplies_targets: ClassVar[frozenset[str]] = frozenset({"index"})
    default_init: ClassVar[list[dict[str, Any]]] = _INIT
    example_config: ClassVar[dict[str, Any]] = {"embed_dims": 8, "num_embed": 16}

    def __init__(
        self,
        *,
        embed_dims: Annotated[int, Field(gt=0)],
        num_embed: Annotated[int, Field(gt=0)],
        loss: LossRef = {"type": "CrossEntropyLoss"},  # noqa: B006
    ) -> None:
        super().__init__()
        self.embed_dims, self.num_embed = embed_dims, num_embed
        self.cls_head = nn.Linear(embed_dims, num_embed)
        self.loss_module = build_component("loss", loss)

    def _ce(self, feats: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        logits = self.cls_head(feats[mask])  # (M, vocab): the masked patches only
        loss: Tensor = self.loss_module(logits, target[mask], avg_factor=max(int(mask.sum()), 1))
        return loss


class BEiTV1Head(_BEiTHead):
    """BEiT v1: a linear classifier over the vocabulary on the masked patch tokens, cross-entropy.

    ``loss(feats, target, mask)``: ``feats`` the backbone's raw tokens (B, 1 + L, C) (cls
    token first; a one-element tuple is unwrapped), ``target`` the tokenizer's logits
    (B, vocab, h, w) or ids (B, L), ``mask`` (B, h, w) True = masked (None: all).

    Args:
        embed_dims: Width of the tokens.
        num_embed: Vocabulary size of the tokenizer (8192 for DALL-E).
        loss: Classification loss over the vocabulary (``CrossEntropyLoss``).

    """

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: raw tokens (B, 1 + 4, C) and token ids (B, 4)."""
        return ((torch.randn(batch_size, 5, self.embed_dims),), torch.randint(0, self.num_embed, (batch_size, 4)))

    def loss(  # type: ignore[override]
        self, feats: Tensor | tuple[Tensor, ...], target: Tensor, mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``{"loss": ...}``: cross-entropy of the masked patches' predicted visual words."""
        tokens = (feats[-1] if isinstance(feats, tuple | list) else feats)[:, 1:]  # (B, L, C), no cls
        return {"loss": self._ce(tokens, _token_ids(target), _flat_mask(mask, tokens))}

    def predict(self, feats: Tensor | tuple[Tensor, ...]) -> Tensor:
        """Visual-word probabilities of every patch, flattened (B, L·vocab)."""
        tokens = (feats[-1] if isinstance(feats, tuple | list) else feats)[:, 1:]
        return self.cls_head(tokens).softmax(-1).flatten(1)


class BEiTV2Head(_BEiTHead):
    """BEiT v2: one shared classifier on the last layer's and the aggregated patch tokens.

    ``loss((x, x_cls_pt), target, mask)``: the ``BEiTV2Neck`` output (each (B, L, C), no
    cls token), the tokenizer's ids (B, L), ``mask`` (B, h, w) True = masked (None: all).

    Args:
        embed_dims: Width of the tokens.
        num_embed: Vocabulary size of the tokenizer (8192 for VQKD).
        loss: Classification loss over the vocabulary (``CrossEntropyLoss``).

    """

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: the neck's two (B, 4, C) token sets and token ids (B, 4)."""
        c = self.embed_dims
        feats = (torch.randn(batch_size, 4, c), torch.randn(batch_size, 4, c))
        return (feats, torch.randint(0, self.num_embed, (batch_size, 4)))

    def loss(  # type: ignore[override]
        self, feats: tuple[Tensor, ...], target: Tensor, mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``{"loss": loss_1 + loss_2, "loss_1": last layer, "loss_2": patch aggregation}``."""
        x, x_cls_pt = feats[0], feats[-1]
        ids, flat = _token_ids(target), _flat_mask(mask, x)
        loss_1, loss_2 = self._ce(x, ids, flat), self._ce(x_cls_pt, ids, flat)
        return {"loss": loss_1 + loss_2, "loss_1": loss_1.detach(), "loss_2": loss_2.detach()}

    def predict(self, feats: tuple[Tensor, ...]) -> Tensor:
        """Visual-word probabilities of every patch from the last layer, flattened (B, L·vocab)."""
        return self.cls_head(feats[0]).softmax(-1).flatten(1)
