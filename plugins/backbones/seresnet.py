"""SE-ResNet and SE-ResNeXt backbones: bottlenecks with squeeze-and-excitation.

Paper: Hu et al., 2018, "Squeeze-and-Excitation Networks" (arXiv:1709.01507).

Provenance: MMPretrain ``mmpretrain/models/backbones/seresnet.py`` and
``seresnext.py``: ``SEBottleneck`` is ResNet's bottleneck with an ``se_layer``
(``SELayer(out_channels, ratio=se_ratio)``: squeeze width
``make_divisible(out // se_ratio, 8)``, ReLU then sigmoid, 1×1 convs with bias) applied
to the branch before the residual addition; ``se_ratio`` defaults to 16. Key names
are ResNet's plus ``se_layer.conv{1,2}.conv``, so timm's ``seresnet50`` and
``seresnext50_32x4d`` weights convert one to one (``se.fc1``/``se.fc2``).
Difference: ``drop_path_rate`` also applies to SE blocks (MMPretrain's SE bottleneck
ignores it).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from torch import Tensor, nn

from pretrain_builtins.backbones.resnet import Bottleneck, ResLayer, ResNet
from pretrain_builtins.layers import SELayer, inherit_args_doc

__all__ = ["SEBottleneck", "SEResNeXt", "SEResNet"]

PositiveInt = Annotated[int, Field(gt=0)]


class SEBottleneck(Bottleneck):
    """ResNet bottleneck whose branch is gated by squeeze-and-excitation before the addition.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        se_ratio: Squeeze ratio of the SE layer (width ``out_channels // se_ratio``,
            rounded to a multiple of 8).
        kwargs: :class:`Bottleneck`'s arguments (stride, groups, ...).

    """

    def __init__(self, in_channels: int, out_channels: int, *, se_ratio: int = 16, **kwargs: Any) -> None:
        super().__init__(in_channels, out_channels, **kwargs)
        self.se_layer = SELayer(out_channels, ratio=se_ratio, gate="Sigmoid")

    def _inner_forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, C_out, H', W')
        out = self.relu(self.bn1(self.conv1(x)))  # (B, C_mid, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # (B, C_mid, H', W')
        out = self.se_layer(self.bn3(self.conv3(out)))  # (B, C_out, H', W'), channel-gated
        return self.drop_path(out).add_(identity)  # in place, like torchvision: one buffer less


class SEResNet(ResNet):
    """SE-ResNet backbone: ResNet-50/101/152 with squeeze-and-excitation in every bottleneck."""

    arch_settings: ClassVar[dict[int, tuple[type[Bottleneck], tuple[int, ...]]]] = {  # type: ignore[assignment]
        50: (SEBottleneck, (3, 4, 6, 3)),
        101: (SEBottleneck, (3, 4, 23, 3)),
        152: (SEBottleneck, (3, 8, 36, 3)),
    }

    #: A small instance for ``pretrain.testing``.
    example_config: ClassVar[dict[str, Any]] = {
        "depth": 50, "stem_channels": 8, "base_channels": 8, "se_ratio": 4, "out_indices": [1, 3],
    }

    def __init__(self, *, depth: Literal[50, 101, 152], se_ratio: PositiveInt = 16, **kwargs: Any) -> None:
        self.se_ratio = se_ratio
        super().__init__(depth=depth, **kwargs)

    def make_res_layer(self, **kwargs: Any) -> nn.Module:
        """A ResNet stage of SE bottlenecks."""
        return ResLayer(se_ratio=self.se_ratio, **kwargs)


class SEResNeXt(SEResNet):
    """SE-ResNeXt backbone: SE-ResNet whose bottlenecks use grouped 3×3 convs (``32x4d`` ...)."""

    #: A small instance for ``pretrain.testing``.
    example_config: ClassVar[dict[str, Any]] = {
        "depth": 50, "groups": 4, "width_per_group": 2, "stem_channels": 8, "base_channels": 8,
        "se_ratio": 4, "out_indices": [3],
    }

    def __init__(
        self,
        *,
        depth: Literal[50, 101, 152],
        groups: PositiveInt = 32,
        width_per_group: PositiveInt = 4,
        **kwargs: Any,
    ) -> None:
        self.groups = groups
        self.width_per_group = width_per_group
        super().__init__(depth=depth, **kwargs)

    def make_res_layer(self, **kwargs: Any) -> nn.Module:
        """A ResNet stage of grouped SE bottlenecks."""
        return ResLayer(
            se_ratio=self.se_ratio, groups=self.groups, width_per_group=self.width_per_group,
            base_width=self.base_channels, **kwargs,
        )


_DEPTH = {"depth": "Network depth: 50, 101 or 152 (bottleneck blocks)."}
_SE = {"se_ratio": "Squeeze ratio of every SE layer (squeeze width ``out // se_ratio``, rounded to 8)."}
inherit_args_doc(SEResNet, ResNet, _DEPTH, extra=_SE)
inherit_args_doc(
    SEResNeXt, ResNet, _DEPTH,
    extra={
        "groups": "Groups of every 3×3 conv (the cardinality: 32 in ``32x4d``).",
        "width_per_group": "Channels per group in the first stage (4 in ``32x4d``); doubles per stage.",
        **_SE,
    },
)
