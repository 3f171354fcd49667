"""MLPClsHead: a classification head with one hidden layer.

The seed guide's "add a new head" step (``VisionTransformerClsHead``: fc -> Tanh
-> fc). MMPretrain's printed version unpacks ``_, cls_token = feat`` (an old ViT
output format; with a batch of two it silently unpacks *samples*) and its
Chinese twin is named ``LinearClsHead`` and uses a missing ``self.fc``. Here the
head takes the last *level* of the feature tuple, owns its loss (a nested
component), converts targets to what the loss takes, and returns an explicit
``{"loss": ...}`` dict.
"""

# [snippet head]
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseHead, LossRef, build_component

__all__ = ["MLPClsHead"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"ReLU": nn.ReLU, "GELU": nn.GELU, "Tanh": nn.Tanh}
_DEFAULT_LOSS = {"type": "CrossEntropyLoss", "loss_weight": 1.0}


class MLPClsHead(BaseHead):
    """Classification head with a hidden layer: fc -> activation -> dropout -> fc.

    Args:
        num_classes: Number of classes.
        in_channels: Width of the incoming (pooled) feature, (N, in_channels).
        hidden_channels: Width of the hidden layer.
        act: Activation after the hidden layer.
        dropout: Dropout probability after the activation (training only).
        loss: The classification loss (a loss table).
        topk: Report these top-k accuracies (percent) with the loss.
    """

    supplies_targets: ClassVar[frozenset[str]] = frozenset({"index", "dense"})
    default_init: ClassVar[list[dict[str, Any]]] = [{"type": "TruncNormal", "layer": "Linear", "std": 0.02}]
    example_config: ClassVar[dict[str, Any]] = {"num_classes": 5, "in_channels": 16, "hidden_channels": 8}

    def __init__(
        self,
        *,
        num_classes: Annotated[int, Field(gt=0)],
        in_channels: Annotated[int, Field(gt=0)],
        hidden_channels: Annotated[int, Field(gt=0)] = 256,
        act: Literal["ReLU", "GELU", "Tanh"] = "Tanh",
        dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
        loss: LossRef = _DEFAULT_LOSS,
        topk: tuple[Annotated[int, Field(gt=0)], ...] = (1,),
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.topk = tuple(topk)
        self.fc1 = nn.Linear(in_channels, hidden_channels)
        self.act = _ACTIVATIONS[act]()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_channels, num_classes)
        self.loss_module = build_component("loss", loss)

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """Top-k accuracy needs at least k classes (checked before anything is built)."""
        topk, classes = params.get("topk", (1,)), params["num_classes"]
        if topk and max(topk) > classes:
            yield "topk", f"top-{max(topk)} accuracy needs {max(topk)} classes, num_classes is {classes}"

    def forward(self, feats: tuple[Tensor, ...]) -> Tensor:
        """Logits (N, num_classes) of the last feature level."""
        x = feats[-1]  # the last *level* of the tuple: (N, in_channels)
        return self.fc2(self.drop(self.act(self.fc1(x))))  # (N, num_classes)

    def loss(self, feats: tuple[Tensor, ...], targets: Tensor) -> dict[str, Tensor]:
        """``{"loss": total, "accuracy/top{k}": ...}`` for class indices (N,) or scores (N, C)."""
        logits = self(feats)
        if getattr(self.loss_module, "target_kind", "index") == "dense" and targets.dim() == 1:
            targets = F.one_hot(targets.long(), self.num_classes).to(logits.dtype)  # (N, C)
        losses = {"loss": self.loss_module(logits, targets, avg_factor=logits.shape[0])}
        with torch.no_grad():
            labels = targets.argmax(dim=-1) if targets.dim() == 2 else targets  # (N,)
            top = logits.topk(max(self.topk), dim=-1).indices  # (N, k)
            for k in self.topk:
                hits = (top[:, :k] == labels[:, None]).any(dim=1)
                losses[f"accuracy/top{k}"] = hits.float().mean() * 100
        return losses

    def predict(self, feats: tuple[Tensor, ...]) -> Tensor:
        """Softmax scores (N, num_classes)."""
        return self(feats).softmax(dim=-1)
# [/snippet]
