"""Classification heads: ``ClsHead`` (logits in), ``LinearClsHead``, ``StackedLinearClsHead``.

Provenance: MMPretrain ``models/heads/cls_head.py``, ``linear_head.py`` and
``stacked_head.py``. The head owns its loss; ``loss(feats, targets)`` returns
``{"loss": total, "accuracy/top{k}": ...}`` (accuracy with ``cal_acc``),
``predict(feats)`` the softmax scores (N, C).

Differences from MMPretrain: targets are converted to what the loss takes
(one-hot for dense losses such as ``L1Loss``); top-k accuracy also works with
dense (Mixup/CutMix) targets, using their argmax (MMPretrain asserts); a bare
(N, C) tensor passed as ``feats`` is used as is instead of ``feats[-1]`` picking
the last *sample*; ``topk`` larger than ``num_classes`` is a validation error.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar

from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseHead, LossRef, build_component
from pretrain_builtins.heads._common import classification_loss, normalise_topk
from pretrain_builtins.layers import ActName, NormName, apply_norm, build_activation, build_norm1d

__all__ = ["ClsHead", "LinearBlock", "LinearClsHead", "StackedLinearClsHead"]

_DEFAULT_LOSS: dict[str, Any] = {"type": "CrossEntropyLoss", "loss_weight": 1.0}

PositiveInt = Annotated[int, Field(gt=0)]


class ClsHead(BaseHead):
    """Classification head without layers: its input features already are the logits.

    Use it after a neck that outputs (N, num_classes); the other heads here add a
    classifier on top of it.

    Args:
        loss: The classification loss (a loss table).
        topk: The k of the top-k accuracy reported with the loss (``cal_acc``).
        cal_acc: Report top-k accuracy (percent) in the training loss dict.

    """

    supplies_targets: ClassVar[frozenset[str]] = frozenset({"index", "dense"})

    def __init__(
        self,
        *,
        loss: LossRef = _DEFAULT_LOSS,
        topk: PositiveInt | tuple[PositiveInt, ...] = (1,),
        cal_acc: bool = False,
    ) -> None:
        super().__init__()
        self.loss_module: nn.Module = build_component("loss", loss)
        self.topk = normalise_topk(topk)
        self.cal_acc = cal_acc
        num_classes = getattr(self, "num_classes", None)
        if isinstance(num_classes, int) and max(self.topk) > num_classes:
            raise ValueError(f"topk {self.topk} exceeds num_classes={num_classes}")

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """``topk`` must not exceed ``num_classes`` (heads that have one)."""
        topk = params.get("topk", (1,))
        ks = (topk,) if isinstance(topk, int) else tuple(topk)
        num_classes = params.get("num_classes")
        if not ks:
            yield "topk", "must list at least one k, e.g. [1, 5]"
        elif isinstance(num_classes, int) and max(ks) > num_classes:
            yield (
                "topk",
                f"top-{max(ks)} accuracy needs at least {max(ks)} classes but num_classes is "
                f"{num_classes}; use values <= {num_classes}, e.g. [1]",
            )

    def pre_logits(self, feats: tuple[Tensor, ...] | Tensor) -> Tensor:
        """The last feature of the tuple (N, C), before the classifier layers."""
        return feats if isinstance(feats, Tensor) else feats[-1]

    def forward(self, feats: tuple[Tensor, ...] | Tensor) -> Tensor:
        """Return the logits (N, num_classes)."""
        return self.pre_logits(feats)

    def loss(self, feats: tuple[Tensor, ...], targets: Tensor) -> dict[str, Tensor]:
        """Return ``{"loss": ..., ["accuracy/top{k}": ...]}``.

        Args:
            feats: Features from the neck or backbone.
            targets: Class indices (N,) or dense class scores (N, C).

        """
        return classification_loss(self.loss_module, self(feats), targets, topk=self.topk, cal_acc=self.cal_acc)

    def predict(self, feats: tuple[Tensor, ...]) -> Tensor:
        """Return softmax scores (N, num_classes)."""
        return self(feats).softmax(dim=-1)


class LinearClsHead(ClsHead):
    """Linear classifier: logits = fc(last feature).

    Args:
        num_classes: Number of classes.
        in_channels: Channels of the input feature (N, in_channels).
        loss: The classification loss (a loss table).
        topk: The k of the top-k accuracy reported with the loss (``cal_acc``).
        cal_acc: Report top-k accuracy (percent) in the training loss dict.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"num_classes": 5, "in_channels": 16}

    default_init: ClassVar[list[dict[str, Any]]] = [{"type": "Normal", "layer": "Linear", "std": 0.01}]

    def __init__(
        self,
        *,
        num_classes: PositiveInt,
        in_channels: PositiveInt,
        loss: LossRef = _DEFAULT_LOSS,
        topk: PositiveInt | tuple[PositiveInt, ...] = (1,),
        cal_acc: bool = False,
    ) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes={num_classes} must be a positive integer")
        self.num_classes = num_classes
        super().__init__(loss=loss, topk=topk, cal_acc=cal_acc)
        self.in_channels = in_channels
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, feats: tuple[Tensor, ...] | Tensor) -> Tensor:
        """Return the logits (N, num_classes)."""
        return self.fc(self.pre_logits(feats))  # (N, C)


class LinearBlock(nn.Module):
    """fc -> norm -> activation -> dropout (each optional but the fc).

    Args:
        in_channels: Input width.
        out_channels: Output width.
        dropout_rate: Dropout probability after the activation (0 disables it).
        norm: Normalisation after the fc, or none.
        act: Activation after the norm, or none.

    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dropout_rate: float = 0.0,
        norm: NormName | None = None,
        act: ActName | None = None,
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, out_channels)
        self.norm = None if norm is None else build_norm1d(norm, out_channels)
        self.act = None if act is None else build_activation(act)
        self.dropout = nn.Dropout(p=dropout_rate) if dropout_rate > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to (N, in_channels) features."""
        x = self.fc(x)  # (N, out)
        if self.norm is not None:
            x = apply_norm(self.norm, x)
        if self.act is not None:
            x = self.act(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return x


class StackedLinearClsHead(ClsHead):
    """MLP classifier: hidden linear blocks (norm, activation, dropout), then a linear layer.

    Args:
        num_classes: Number of classes.
        in_channels: Channels of the input feature (N, in_channels).
        mid_channels: Widths of the hidden layers (at least one).
        dropout_rate: Dropout after each hidden layer (0 disables it).
        norm: Normalisation in the hidden layers (BN1d, SyncBN or LN), or none.
        act: Activation in the hidden layers, or none.
        loss: The classification loss (a loss table).
        topk: The k of the top-k accuracy reported with the loss (``cal_acc``).
        cal_acc: Report top-k accuracy (percent) in the training loss dict.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"num_classes": 5, "in_channels": 16, "mid_channels": [8]}

    def __init__(
        self,
        *,
        num_classes: PositiveInt,
        in_channels: PositiveInt,
        mid_channels: Annotated[list[PositiveInt], Field(min_length=1, max_length=256)],
        dropout_rate: Annotated[float, Field(ge=0, lt=1)] = 0.0,
        norm: NormName | None = None,
        act: ActName | None = "ReLU",
        loss: LossRef = _DEFAULT_LOSS,
        topk: PositiveInt | tuple[PositiveInt, ...] = (1,),
        cal_acc: bool = False,
    ) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes={num_classes} must be a positive integer")
        if not mid_channels:
            raise ValueError("mid_channels must list at least one hidden width")
        self.num_classes = num_classes
        super().__init__(loss=loss, topk=topk, cal_acc=cal_acc)
        self.in_channels = in_channels
        self.mid_channels = list(mid_channels)
        widths = [in_channels, *self.mid_channels]
        self.layers = nn.ModuleList(
            LinearBlock(w_in, w_out, dropout_rate=dropout_rate, norm=norm, act=act)
            for w_in, w_out in itertools.pairwise(widths)
        )
        self.layers.append(LinearBlock(widths[-1], num_classes))

    @property
    def fc(self) -> LinearBlock:
        """The final classifier block."""
        return self.layers[-1]  # type: ignore[return-value]

    def pre_logits(self, feats: tuple[Tensor, ...] | Tensor) -> Tensor:
        """The output of the hidden layers (N, mid_channels[-1])."""
        x = super().pre_logits(feats)
        for layer in self.layers[:-1]:
            x = layer(x)
        return x

    def forward(self, feats: tuple[Tensor, ...] | Tensor) -> Tensor:
        """Return the logits (N, num_classes)."""
        return self.fc(self.pre_logits(feats))
