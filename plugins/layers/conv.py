"""Convolution blocks of the CNN backbones.

``make_divisible`` is the channel-rounding rule of MobileNetV2 (Sandler et al., 2018),
as in MMPretrain's ``models/utils/make_divisible.py``. ``ConvBNAct`` is MMCV's
``ConvModule`` in its conv -> BN -> activation order, restricted to what the CNN
backbones use. ``SELayer`` is the squeeze-and-excitation block (Hu et al., 2018) as
used by MobileNetV3, SE-ResNet and EfficientNet. ``Conv2dAdaptivePadding`` is MMCV's
TensorFlow-style "same" padding, and ``ConvCfg``/``BNCfg`` are the typed forms of
MMCV's ``conv_cfg``/``norm_cfg`` tables, so MMPretrain configs port field for field.
"""

from __future__ import annotations

import math
from typing import Literal, TypeAlias

import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import NotRequired, TypedDict

from pretrain_builtins.layers.activation import ActName, build_activation

__all__ = [
    "BNCfg",
    "Conv2dAdaptivePadding",
    "ConvBNAct",
    "ConvCfg",
    "ConvType",
    "SELayer",
    "build_conv2d",
    "make_divisible",
]

#: Convolution classes a ``conv_cfg`` may name (MMCV's registry names).
ConvType: TypeAlias = Literal["Conv2d", "Conv2dAdaptivePadding"]


class ConvCfg(TypedDict):
    """MMCV's ``conv_cfg`` table: which convolution the layers use.

    ``Conv2dAdaptivePadding`` pads like TensorFlow's ``"same"`` (the output is
    ``ceil(input / stride)``, extra padding at the bottom/right): the layout of
    TensorFlow-trained EfficientNet weights (timm's ``tf_*`` models).
    """

    type: ConvType


class BNCfg(TypedDict):
    """MMCV's ``norm_cfg`` table for BatchNorm: ``{type = "BN", eps = 1e-3, momentum = 0.1}``.

    ``momentum`` uses PyTorch's convention (weight of the new batch statistics).
    """

    type: Literal["BN", "BN2d"]
    eps: NotRequired[float]
    momentum: NotRequired[float]


class Conv2dAdaptivePadding(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``"same"`` padding computed from the input size.

    MMCV's ``Conv2dAdaptivePadding``: the ``padding`` argument is ignored; before each
    call the input is zero-padded so that the output is ``ceil(H / stride)`` ×
    ``ceil(W / stride)``, with any odd pixel of padding at the bottom/right. For a
    stride-1 conv with an odd kernel this equals ``padding = kernel_size // 2``.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Pad ``x`` (B, C, H, W) "same"-style, then convolve."""
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        dh, dw = self.dilation
        # Plain int arithmetic on the shape: also valid on the meta device.
        pad_h = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def build_conv2d(
    conv_type: ConvType | None,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int | None = None,
    groups: int = 1,
    bias: bool = False,
) -> nn.Conv2d:
    """A ``Conv2d`` (symmetric ``padding``, default ``kernel_size // 2``) or a ``Conv2dAdaptivePadding``.

    Args:
        conv_type: ``Conv2dAdaptivePadding`` for TensorFlow "same" padding; ``Conv2d`` or
            ``None`` for a plain convolution.
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size.
        stride: Convolution stride.
        padding: Symmetric zero padding of a plain conv (ignored by the adaptive one).
        groups: Convolution groups.
        bias: Whether the convolution has a bias.

    """
    if conv_type == "Conv2dAdaptivePadding":
        return Conv2dAdaptivePadding(
            in_channels, out_channels, kernel_size, stride, 0, groups=groups, bias=bias
        )
    if padding is None:
        padding = kernel_size // 2
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)


def make_divisible(
    value: float, divisor: int, min_value: int | None = None, min_ratio: float = 0.9
) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (MobileNet channel rule).

    Args:
        value: The raw channel count (e.g. ``32 * widen_factor``).
        divisor: The multiple to round to.
        min_value: Lower bound of the result; defaults to ``divisor``.
        min_ratio: The result is bumped up by ``divisor`` if rounding would
            lose more than ``1 - min_ratio`` of ``value``.

    Returns:
        The rounded channel count.

    """
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    # Make sure that rounding down does not go down by more than (1 - min_ratio).
    if new_value < min_ratio * value:
        new_value += divisor
    return new_value


class ConvBNAct(nn.Sequential):
    """``Conv2d`` (no bias) → ``BatchNorm2d`` → activation, named ``conv``/``bn``/``activate``.

    The child names are MMCV's ``ConvModule``'s, so state-dict keys match
    MMPretrain checkpoints (``conv1.conv.weight``, ``conv1.bn.running_mean``).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size.
        stride: Convolution stride.
        padding: Zero padding; defaults to ``kernel_size // 2``.
        groups: Convolution groups (``in_channels`` for depthwise).
        act: Activation name, or ``None`` for no activation.
        bn_eps: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum (PyTorch convention).
        conv_type: ``Conv2dAdaptivePadding`` for TensorFlow "same" padding (then
            ``padding`` is ignored); ``None``/``Conv2d`` for a plain convolution.

    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        act: ActName | None = "ReLU",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        conv_type: ConvType | None = None,
    ) -> None:
        super().__init__()
        self.conv = build_conv2d(
            conv_type, in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            groups=groups,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.activate = build_activation(act, inplace=True)


class SELayer(nn.Module):
    """Squeeze-and-excitation: channel gates from globally pooled features.

    MMPretrain's ``SELayer`` (1×1 convs with bias, no BN): MobileNetV3 uses
    ``ratio=4``, ``divisor=8``, ReLU then HSigmoid; SE-ResNet ``ratio=16``,
    ReLU then Sigmoid; EfficientNet ``divisor=1``, Swish then Sigmoid.

    Args:
        channels: Channels of the input (and output).
        squeeze_channels: Channels of the bottleneck; defaults to
            ``make_divisible(channels // ratio, divisor)``.
        ratio: Squeeze ratio used when ``squeeze_channels`` is not given.
        divisor: Rounding divisor for the bottleneck width.
        gate: Activation producing the gates.
        act: Activation after the squeeze conv.

    """

    def __init__(
        self,
        channels: int,
        squeeze_channels: int | None = None,
        ratio: float = 16,
        divisor: int = 8,
        gate: ActName = "HSigmoid",
        act: ActName = "ReLU",
    ) -> None:
        super().__init__()
        if squeeze_channels is None:
            squeeze_channels = make_divisible(channels // ratio, divisor)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        # MMCV ConvModule(..., act_cfg=...) without norm: conv has a bias.
        self.conv1 = nn.Sequential()
        self.conv1.add_module("conv", nn.Conv2d(channels, int(squeeze_channels), 1, bias=True))
        self.conv1.add_module("activate", build_activation(act, inplace=True))
        self.conv2 = nn.Sequential()
        self.conv2.add_module("conv", nn.Conv2d(int(squeeze_channels), channels, 1, bias=True))
        self.conv2.add_module("activate", build_activation(gate))

    def forward(self, x: Tensor) -> Tensor:
        """Scale each channel of ``x`` by a learned gate in [0, 1]."""
        w = self.global_avgpool(x)  # (B, C, 1, 1)
        w = self.conv2(self.conv1(w))  # (B, C, 1, 1)
        return x * w
