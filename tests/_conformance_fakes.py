"""Small components for the conformance-kit tests: correct ones and deliberately broken twins.

Each broken class makes exactly one mistake that plugin authors really make (several
are in MMPretrain's own "Customize Models" guide).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pretrain.components import BaseBackbone, BaseHead, BaseLoss, BaseNeck, LossRef, build_component
from pretrain.losses import Reduction, resolve_reduction, weighted_loss

# ----------------------------------------------------------------------------- backbones


class GoodNet(BaseBackbone):
    """Two convs and a BatchNorm.

    Args:
        channels: Output channels.
    """

    def __init__(self, *, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return (self.conv2(torch.relu(self.bn(self.conv(x)))),)


class CrossTalkNet(GoodNet):
    """Subtracts the batch mean: sample i's features depend on the other samples.

    Args:
        channels: Output channels.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        (y,) = super().forward(x)
        return (y - y.mean(0, keepdim=True),)


class UnusedParamNet(GoodNet):
    """Builds a projection it never uses, so that parameter never gets a gradient.

    Args:
        channels: Output channels.
    """

    def __init__(self, *, channels: int = 8) -> None:
        super().__init__(channels=channels)
        self.proj = nn.Linear(channels, channels)  # forgotten in forward


class ListNet(GoodNet):
    """Returns a list instead of a tuple.

    Args:
        channels: Output channels.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return list(super().forward(x))  # type: ignore[return-value]


class NoisyEvalNet(GoodNet):
    """Adds noise in eval mode too.

    Args:
        channels: Output channels.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        (y,) = super().forward(x)
        return (y + 0.1 * torch.randn_like(y),)


class UnsavedStateNet(GoodNet):
    """Keeps a random scale as a plain attribute, so checkpoints do not restore it.

    Args:
        channels: Output channels.
    """

    def __init__(self, *, channels: int = 8) -> None:
        super().__init__(channels=channels)
        self.scale = torch.rand(channels, 1, 1)  # should be a buffer

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        (y,) = super().forward(x)
        return (y * self.scale,)


class UndocumentedNet(GoodNet):
    """A backbone whose docstring forgets its argument."""


class NeedsDepth(GoodNet):
    """A backbone with a required field and no example config.

    Args:
        depth: Required.
        channels: Output channels.
    """

    def __init__(self, *, depth: int, channels: int = 8) -> None:
        super().__init__(channels=channels)
        self.depth = depth


class NeedsDepthWithExample(NeedsDepth):
    """Same, with an example config.

    Args:
        depth: Required.
        channels: Output channels.
    """

    example_config: ClassVar[dict[str, Any]] = {"depth": 2, "channels": 4}


# ----------------------------------------------------------------------------- necks


class GoodPool(BaseNeck):
    """Global average pooling of every level."""

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(x.mean((2, 3)) for x in inputs)  # (N, C) each


class BareTensorPool(BaseNeck):
    """Pools the last level but returns a bare tensor (the contract is a tuple)."""

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return inputs[-1].mean((2, 3))  # type: ignore[return-value]


class TutorialPool(BaseNeck):
    """MMPretrain's guide: "we regard inputs as tensor", so a tuple input breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, inputs: Any) -> Any:
        return self.gap(inputs).flatten(1)


class DetachingNeck(BaseNeck):
    """Detaches its input, so the backbone before it never trains."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(x.detach().mean((2, 3)) * self.scale for x in inputs)


# ----------------------------------------------------------------------------- losses


@weighted_loss
def _abs_error(pred: Tensor, target: Tensor) -> Tensor:
    return (pred - target).abs()


class GoodL1(BaseLoss):
    """L1 on dense targets through weighted_loss.

    Args:
        reduction: none, mean or sum.
        loss_weight: Scale.
    """

    target_kind = "dense"

    def __init__(self, *, reduction: Reduction = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        self.reduction, self.loss_weight = reduction, loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None) -> Tensor:
        reduction = resolve_reduction(self.reduction, reduction_override)
        return self.loss_weight * _abs_error(pred, target, weight, reduction=reduction, avg_factor=avg_factor)


class IgnoresWeightL1(GoodL1):
    """Reduces correctly but never applies ``weight``.

    Args:
        reduction: none, mean or sum.
        loss_weight: Scale.
    """

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None) -> Tensor:
        return super().forward(pred, target, None, avg_factor, reduction_override)


class IgnoresReductionL1(GoodL1):
    """Always returns the mean.

    Args:
        reduction: none, mean or sum.
        loss_weight: Scale.
    """

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None) -> Tensor:
        return super().forward(pred, target, weight, avg_factor, None)


class SquaredWeightL1(GoodL1):
    """Applies ``loss_weight`` twice (not linear).

    Args:
        reduction: none, mean or sum.
        loss_weight: Scale.
    """

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None) -> Tensor:
        return self.loss_weight * super().forward(pred, target, weight, avg_factor, reduction_override)


class OldSignatureLoss(BaseLoss):
    """A loss with the plain ``forward(pred, target)`` signature.

    Args:
        loss_weight: Scale.
    """

    def __init__(self, *, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        return self.loss_weight * nn.functional.cross_entropy(pred, target)


# ----------------------------------------------------------------------------- heads


class GoodHead(BaseHead):
    """Linear classifier on pooled features.

    Args:
        in_channels: Feature channels.
        num_classes: Classes.
        loss: The loss.
    """

    example_config: ClassVar[dict[str, Any]] = {"in_channels": 6, "num_classes": 3}

    def __init__(self, *, in_channels: int, num_classes: int,
                 loss: LossRef = {"type": "CrossEntropyLoss"}) -> None:  # noqa: B006 - spec default
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)
        self.loss_module = build_component("loss", loss)

    def predict(self, feats: tuple[Tensor, ...]) -> Tensor:
        return self.fc(feats[-1])  # (N, C)

    def loss(self, feats: tuple[Tensor, ...], targets: Tensor) -> dict[str, Tensor]:
        return {"loss": self.loss_module(self.predict(feats), targets)}


class TensorLossHead(GoodHead):
    """Returns the loss tensor itself instead of a dict.

    Args:
        in_channels: Feature channels.
        num_classes: Classes.
        loss: The loss.
    """

    def loss(self, feats: tuple[Tensor, ...], targets: Tensor) -> dict[str, Tensor]:
        return self.loss_module(self.predict(feats), targets)  # type: ignore[no-any-return]


class SampleIndexingHead(GoodHead):
    """The guide's bug: treats feats as a tensor, so ``feats[-1]`` is the last *sample*.

    Args:
        in_channels: Feature channels.
        num_classes: Classes.
        loss: The loss.
    """

    def predict(self, feats: tuple[Tensor, ...]) -> Tensor:
        return self.fc(feats[-1][-1])  # (C,): the last sample of the last level
