"""ResNet for 32×32 inputs (CIFAR): 3×3 stride-1 stem and no max-pool.

Provenance: MMPretrain ``mmpretrain/models/backbones/resnet_cifar.py``, the
backbone of the "Customize Models" tutorial and of the
``resnet18_8xb16_cifar10`` config (ResNet_CIFAR-18 + GAP + LinearClsHead(10):
11,173,962 parameters, 94.82 % top-1). The design follows
https://github.com/kuangliu/pytorch-cifar. Unlike the tutorial's copy, the
output is always a tuple (as the real MMPretrain code does, whatever its
docstring says), and ``deep_stem=true`` is a validation error rather than an
``assert`` after construction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from pretrain_builtins.backbones.resnet import ResNet
from pretrain_builtins.layers import inherit_args_doc

__all__ = ["ResNet_CIFAR"]


class ResNet_CIFAR(ResNet):
    """ResNet backbone for CIFAR: 3×3 stride-1 stem conv and no max-pool after it.

    ResNet_CIFAR-18 at 32×32 returns (512, 4, 4) from stage 3; the backbone has
    11,168,832 parameters.
    """

    fixed_fields: ClassVar[dict[str, Any]] = {"deep_stem": False}
    #: Input size `pretrain validate` checks with when the spec has no `data.image_size`.
    default_input_size: ClassVar[int] = 32

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """ResNet's checks; ``deep_stem`` must stay false (the stem is the 3×3 conv)."""
        for field, msg in super().spec_issues(params):
            if field == "deep_stem":
                yield field, (
                    "ResNet_CIFAR has its own 3×3 stride-1 stem, so deep_stem is not "
                    "supported; remove it (or use ResNetV1c for a deep stem)"
                )
            else:
                yield field, msg

    def _make_stem_layer(self, in_channels: int, stem_channels: int) -> None:
        self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)

    def _forward_stem(self, x: Tensor) -> Tensor:
        return self.relu(self.bn1(self.conv1(x)))  # (B, stem, H, W)


inherit_args_doc(
    ResNet_CIFAR, ResNet,
    {"deep_stem": "Not supported by ResNet_CIFAR (must be false)."},
)
