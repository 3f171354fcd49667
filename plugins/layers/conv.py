"""Convolution blocks of the CNN backbones.

``make_divisible`` is the channel-rounding rule of MobileNetV2 (Sandler et al., 2018),
as in MMPretrain's ``models/utils/make_divisible.py``. ``ConvBNAct`` is MMCV's
``ConvModule`` in its conv -> BN -> activation order, restricted to what the CNN
backbones use. ``SELayer`` is the squeeze-and-excitation block (Hu et al., 2018) as
used by MobileNetV3.
"""

from __future__ import annotations

from torch import Tensor, nn

from pretrain_builtins.layers.activation import ActName, build_activation

__all__ = ["ConvBNAct", "SELayer", "make_divisible"]


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
    ) -> None:
        super().__init__()
        if padding is None:
            padding = kernel_size // 2
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.activate = build_activation(act, inplace=True)


class SELayer(nn.Module):
    """Squeeze-and-excitation: channel gates from globally pooled features.

    Matches MMPretrain's ``SELayer`` as configured by MobileNetV3
    (``ratio=4``, ``divisor=8``, ReLU then HSigmoid, 1×1 convs with bias, no BN).

    Args:
        channels: Channels of the input (and output).
        squeeze_channels: Channels of the bottleneck; defaults to
            ``make_divisible(channels // ratio, divisor)``.
        ratio: Squeeze ratio used when ``squeeze_channels`` is not given.
        divisor: Rounding divisor for the bottleneck width.
        gate: Activation producing the gates.

    """

    def __init__(
        self,
        channels: int,
        squeeze_channels: int | None = None,
        ratio: int = 16,
        divisor: int = 8,
        gate: ActName = "HSigmoid",
    ) -> None:
        super().__init__()
        if squeeze_channels is None:
            squeeze_channels = make_divisible(channels // ratio, divisor)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        # MMCV ConvModule(..., act_cfg=ReLU) without norm: conv has a bias.
        self.conv1 = nn.Sequential()
        self.conv1.add_module("conv", nn.Conv2d(channels, squeeze_channels, 1, bias=True))
        self.conv1.add_module("activate", nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential()
        self.conv2.add_module("conv", nn.Conv2d(squeeze_channels, channels, 1, bias=True))
        self.conv2.add_module("activate", build_activation(gate))

    def forward(self, x: Tensor) -> Tensor:
        """Scale each channel of ``x`` by a learned gate in [0, 1]."""
        w = self.global_avgpool(x)  # (B, C, 1, 1)
        w = self.conv2(self.conv1(w))  # (B, C, 1, 1)
        return x * w
