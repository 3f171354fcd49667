"""Vision Transformer classification head: optional Tanh pre-logits layer, then a Linear.

Provenance: Dosovitskiy et al., 2021 (arXiv:2010.11929), whose pre-training head has
a hidden ``pre_logits`` layer with Tanh; MMPretrain's ``VisionTransformerClsHead``
(``mmpretrain/models/heads/vision_transformer_head.py``): same child names
(``layers.pre_logits``, ``layers.act``, ``layers.head``; also torchvision's), same
init (Linear weights zero; ``pre_logits`` truncated normal with std ``√(1/in)``).
It takes the backbone's (B, C) cls-token feature; the "Customize Models" guide's
version that unpacks ``_, cls_token = feat`` (the 0.x ViT output) is not copied.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Annotated, Any, ClassVar

from pydantic import Field
from torch import Tensor, nn

from pretrain.components import LossRef
from pretrain.errors import PretrainError
from pretrain_builtins.heads.cls_head import ClsHead

__all__ = ["VisionTransformerClsHead"]

_DEFAULT_LOSS: dict[str, Any] = {"type": "CrossEntropyLoss", "loss_weight": 1.0}

PositiveInt = Annotated[int, Field(gt=0)]


class VisionTransformerClsHead(ClsHead):
    """ViT classifier: ``[Linear -> Tanh] -> Linear`` on the (B, C) cls-token feature.

    ``loss``/``predict`` are :class:`ClsHead`'s: index targets become one-hot for
    losses that take dense targets, top-k accuracy with ``cal_acc``, softmax scores.

    Args:
        num_classes: Number of classes.
        in_channels: Width of the input feature (the backbone's ``embed_dims``).
        hidden_dim: Width of the Tanh pre-logits layer; none (the default) for a
            single Linear, as in fine-tuning.
        loss: The classification loss (a loss table).
        topk: The k of the top-k accuracy reported with the loss (``cal_acc``).
        cal_acc: Report top-k accuracy (percent) in the training loss dict.

    """

    default_init: ClassVar[list[dict[str, Any]]] = [
        {"type": "Constant", "layer": ["Linear"], "val": 0.0}
    ]
    #: A small instance for the conformance kit (``pretrain.testing``).
    example_config: ClassVar[dict[str, Any]] = {"num_classes": 5, "in_channels": 16, "hidden_dim": 8}

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
        self.num_classes = num_classes  # read by ClsHead's topk check
        super().__init__(loss=loss, topk=topk, cal_acc=cal_acc)
        self.in_channels = in_channels
        self.hidden_dim = hidden_dim
        layers: list[tuple[str, nn.Module]]
        if hidden_dim is None:
            layers = [("head", nn.Linear(in_channels, num_classes))]
        else:
            layers = [
                ("pre_logits", nn.Linear(in_channels, hidden_dim)),
                ("act", nn.Tanh()),
                ("head", nn.Linear(hidden_dim, num_classes)),
            ]
        self.layers = nn.Sequential(OrderedDict(layers))

    def post_init_weights(self) -> None:
        """Truncated-normal ``pre_logits`` (std ``√(1/in)``), zero bias (after the Constant rule)."""
        if self.hidden_dim is None:
            return
        pre = self.layers.pre_logits
        assert isinstance(pre, nn.Linear)
        nn.init.trunc_normal_(pre.weight, std=math.sqrt(1.0 / pre.in_features))
        nn.init.zeros_(pre.bias)

    def pre_logits(self, feats: tuple[Tensor, ...] | Tensor) -> Tensor:
        """The last feature (B, C), through ``pre_logits`` + Tanh if ``hidden_dim`` is set."""
        x = super().pre_logits(feats)
        if x.dim() != 2:
            raise PretrainError(
                f"VisionTransformerClsHead expects (B, C) features, got shape {tuple(x.shape)}",
                hint='Set the backbone\'s out_type = "cls_token" or "avg_featmap".',
            )
        if self.hidden_dim is None:
            return x
        out: Tensor = self.layers.act(self.layers.pre_logits(x))  # (B, hidden)
        return out

    def forward(self, feats: tuple[Tensor, ...] | Tensor) -> Tensor:
        """Logits (B, num_classes)."""
        logits: Tensor = self.layers.head(self.pre_logits(feats))
        return logits
