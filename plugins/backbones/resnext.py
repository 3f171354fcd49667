"""ResNeXt backbone: ResNet with grouped 3×3 convolutions.

Paper: Xie et al., 2017, "Aggregated Residual Transformations for Deep Neural
Networks" (arXiv:1611.05431).

Provenance: MMPretrain ``mmpretrain/models/backbones/resnext.py``: ``groups`` and
``width_per_group`` (``32x4d`` = 32 groups of width 4 at the first stage's 64
channels), the mid width rule ``groups * width_per_group * (out / expansion) // 64``
and ResNet's layer names, so that a ResNeXt-50 32x4d has exactly torchvision's
``resnext50_32x4d`` parameters (25,028,904 with a 1000-class head) and state-dict keys.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from torch import nn

from pretrain_builtins.backbones.resnet import Bottleneck, ResLayer, ResNet
from pretrain_builtins.layers import inherit_args_doc

__all__ = ["ResNeXt"]

PositiveInt = Annotated[int, Field(gt=0)]


class ResNeXt(ResNet):
    """ResNeXt backbone: ResNet-50/101/152 whose bottlenecks use grouped 3×3 convs (``32x4d`` ...).

    Stage ``i`` has 3×3 convs of ``groups * width_per_group * 2**i`` channels in
    ``groups`` groups; outputs have ResNet's widths (256, 512, 1024, 2048).
    """

    arch_settings: ClassVar[dict[int, tuple[type[Bottleneck], tuple[int, ...]]]] = {  # type: ignore[assignment]
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
        152: (Bottleneck, (3, 8, 36, 3)),
    }

    #: A small instance for ``pretrain.testing``.
    example_config: ClassVar[dict[str, Any]] = {
        "depth": 50, "groups": 4, "width_per_group": 2, "stem_channels": 8, "base_channels": 8,
        "out_indices": [1, 3],
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
        """A ResNet stage whose bottlenecks have ``groups`` groups of ``width_per_group``."""
        return ResLayer(
            groups=self.groups, width_per_group=self.width_per_group, base_width=self.base_channels,
            **kwargs,
        )


inherit_args_doc(
    ResNeXt, ResNet,
    {"depth": "Network depth: 50, 101 or 152 (bottleneck blocks)."},
    extra={
        "groups": "Groups of every 3×3 conv (the cardinality: 32 in ``32x4d``).",
        "width_per_group": "Channels per group in the first stage (4 in ``32x4d``); doubles per stage.",
    },
)
