"""AcmeResNetCIFAR: the built-in ResNet with a CIFAR-style stem, as a third-party backbone.

The seed guide's first step ("add a new backbone": ``ResNet_CIFAR``). Unlike
MMPretrain's printed version it needs no ``build_conv_layer`` imports, has no
``init_weights`` override (weight init is declarative: ResNet's ``default_init``
applies), and pins ``deep_stem`` instead of requiring it in every config.
"""

# [snippet backbone]
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from torch import Tensor, nn

from pretrain_builtins.backbones.resnet import ResNet

__all__ = ["AcmeResNetCIFAR"]


class AcmeResNetCIFAR(ResNet):
    """ResNet for small images: a 3×3 stride-1 stem conv and no max-pool.

    A 32×32 input keeps its resolution through the stem, so the last stage
    returns 4×4 maps instead of 1×1.

    Args:
        depth: ResNet depth (18 and 34 use basic blocks, 50+ bottlenecks).
        in_channels: Channels of the input images (1 for grey digits).
        base_channels: Width of the stem and the first stage; stage i has
            ``base_channels * 2**i`` (times the block expansion) channels.
        out_indices: Stages whose feature maps are returned, in 0..3.
        frozen_stages: Freeze the stem and stages 1..N (-1 freezes nothing).
        zero_init_residual: Start every residual block as an identity.
    """

    # The conformance kit (and `pretrain describe`) build this small instance.
    example_config: ClassVar[dict[str, Any]] = {"depth": 18, "base_channels": 8}

    def __init__(
        self,
        *,
        depth: Literal[18, 34, 50, 101, 152] = 18,
        in_channels: Annotated[int, Field(gt=0)] = 3,
        base_channels: Annotated[int, Field(gt=0)] = 64,
        out_indices: tuple[int, ...] = (3,),
        frozen_stages: Annotated[int, Field(ge=-1, le=4)] = -1,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__(
            depth=depth, in_channels=in_channels, stem_channels=base_channels,
            base_channels=base_channels, out_indices=out_indices, frozen_stages=frozen_stages,
            zero_init_residual=zero_init_residual, deep_stem=False,
        )

    # ResNet builds and runs its stem through these two hooks.
    def _make_stem_layer(self, in_channels: int, stem_channels: int) -> None:
        self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)

    def _forward_stem(self, x: Tensor) -> Tensor:
        return self.relu(self.bn1(self.conv1(x)))  # (B, C, H, W): no downsampling
# [/snippet]
