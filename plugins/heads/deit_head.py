"""DeiT classification head: a classifier for the cls token and one for the distillation token.

Provenance: Touvron et al., 2021 (arXiv:2012.12877); MMPretrain's ``DeiTClsHead``
(``mmpretrain/models/heads/deit_head.py``): ``VisionTransformerClsHead``'s layers plus
``layers.head_dist``; the prediction averages the two classifiers' logits. It takes the
(B, 2, C) output of ``DistilledVisionTransformer``.

Difference (``docs/differences.md``): MMPretrain's head only warns that it "cannot
train the distilled version" and trains the averaged logits. Here, without a teacher,
``loss`` trains each classifier on the targets and averages the two losses: DeiT's
hard-distillation objective with the ground truth standing in for the teacher's labels,
so both heads learn and either can be used alone.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from pretrain.components import LossRef
from pretrain.errors import PretrainError
from pretrain_builtins.heads._common import classification_loss, topk_accuracy
from pretrain_builtins.heads.vit_head import VisionTransformerClsHead

__all__ = ["DeiTClsHead"]

_DEFAULT_LOSS: dict[str, Any] = {"type": "CrossEntropyLoss", "loss_weight": 1.0}

PositiveInt = Annotated[int, Field(gt=0)]


class DeiTClsHead(VisionTransformerClsHead):
    """DeiT classifier: ``(head(cls) + head_dist(dist)) / 2`` on the (B, 2, C) token pair.

    ``predict`` gives the softmax of the averaged logits. ``loss`` is the mean of
    the two classifiers' losses against the same targets (no teacher).

    Args:
        num_classes: Number of classes.
        in_channels: Width of the input tokens (the backbone's ``embed_dims``).
        hidden_dim: Width of a shared Tanh pre-logits layer; none for plain Linears.
        loss: The classification loss (a loss table).
        topk: The k of the top-k accuracy reported with the loss (``cal_acc``).
        cal_acc: Report top-k accuracy (percent) of the averaged logits in the loss dict.

    """

    #: One sample's features: the cls and distillation tokens.
    example_input: ClassVar[tuple[int, ...]] = (2, 16)
    #: A small instance for the conformance kit (``pretrain.testing``).
    example_config: ClassVar[dict[str, Any]] = {"num_classes": 5, "in_channels": 16}

    def __init__(
        self,
        *,
        num_classes: PositiveInt,
        in_channels: PositiveInt,
        hidden_dim: PositiveInt | None = None,
        loss: LossRef = _DEFAULT_LOSS,
        topk: PositiveInt | tuple[PositiveInt, ...] = (1,),
        cal_acc: bool = False,
    ) -> None:
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, hidden_dim=hidden_dim, loss=loss,
            topk=topk, cal_acc=cal_acc,
        )
        self.layers.add_module("head_dist", nn.Linear(hidden_dim or in_channels, num_classes))

    def _tokens(self, feats: tuple[Tensor, ...] | Tensor) -> tuple[Tensor, Tensor]:
        x = feats if isinstance(feats, Tensor) else feats[-1]
        if x.dim() != 3 or x.shape[1] != 2:
            raise PretrainError(
                f"DeiTClsHead expects (B, 2, C) features (cls and distillation tokens), got shape "
                f"{tuple(x.shape)}",
                hint='Use a DistilledVisionTransformer backbone with out_type = "cls_token".',
            )
        cls_token, dist_token = x[:, 0], x[:, 1]  # each (B, C)
        if self.hidden_dim is None:
            return cls_token, dist_token
        pre, act = self.layers.pre_logits, self.layers.act
        return act(pre(cls_token)), act(pre(dist_token))

    def pre_logits(self, feats: tuple[Tensor, ...] | Tensor) -> Tensor:  # type: ignore[override]
        """The two (pre-logit) tokens stacked: (B, 2, C) or (B, 2, hidden_dim)."""
        cls_token, dist_token = self._tokens(feats)
        return torch.stack((cls_token, dist_token), dim=1)

    def _both_logits(self, feats: tuple[Tensor, ...] | Tensor) -> tuple[Tensor, Tensor]:
        cls_token, dist_token = self._tokens(feats)
        return self.layers.head(cls_token), self.layers.head_dist(dist_token)  # each (B, num_classes)

    def forward(self, feats: tuple[Tensor, ...] | Tensor) -> Tensor:
        """The averaged logits (B, num_classes)."""
        cls_score, dist_score = self._both_logits(feats)
        out: Tensor = (cls_score + dist_score) / 2
        return out

    def loss(self, feats: tuple[Tensor, ...], targets: Tensor) -> dict[str, Tensor]:
        """Mean of the cls and distillation classifiers' losses; accuracy of the averaged logits."""
        cls_score, dist_score = self._both_logits(feats)
        cls_loss = classification_loss(self.loss_module, cls_score, targets)["loss"]
        dist_loss = classification_loss(self.loss_module, dist_score, targets)["loss"]
        out = {"loss": (cls_loss + dist_loss) / 2, "loss_cls": cls_loss.detach(), "loss_dist": dist_loss.detach()}
        if self.cal_acc:
            out.update(topk_accuracy(((cls_score + dist_score) / 2).detach(), targets, self.topk))
        return out
