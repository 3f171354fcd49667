"""Mobile inverted-bottleneck blocks of the EfficientNet families.

``MBConv`` is MMPretrain's ``models/utils/inverted_residual.py:InvertedResidual``
(1×1 expand → k×k depthwise → optional squeeze-and-excitation → 1×1 linear
projection, residual with stochastic depth); ``EdgeResidual`` is MMPretrain's
``EdgeResidual`` from ``backbones/efficientnet.py`` (EfficientNet-EdgeTPU), which
EfficientNetV2 uses as its Fused-MBConv (k×k expand conv → SE → 1×1 projection).
Child names follow MMPretrain (``expand_conv``/``depthwise_conv``/``se``/``linear_conv``,
``conv1``/``se``/``conv2``, each a ``conv``/``bn`` pair), so its checkpoints load as is.
"""

from __future__ import annotations

from torch import Tensor, nn

from pretrain_builtins.layers.activation import ActName
from pretrain_builtins.layers.backbone_utils import maybe_checkpoint
from pretrain_builtins.layers.conv import ConvBNAct, ConvType, SELayer
from pretrain_builtins.layers.drop import DropPath

__all__ = ["EdgeResidual", "MBConv"]


def _se(mid_channels: int, se_channels: int | None, act: ActName) -> nn.Module | None:
    # EfficientNet's SE: squeeze with the block's activation, sigmoid gates, no rounding.
    if se_channels is None:
        return None
    return SELayer(mid_channels, squeeze_channels=se_channels, gate="Sigmoid", act=act)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand → depthwise k×k → [SE] → 1×1 linear (MMPretrain ``InvertedResidual``).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        mid_channels: Channels of the depthwise conv; the expansion conv exists only
            when they differ from ``in_channels``.
        kernel_size: Depthwise kernel size.
        stride: Depthwise stride (1 or 2).
        se_channels: Squeeze width of the SE layer after the depthwise conv; ``None``
            for no SE.
        act: Activation of the expansion and depthwise convs (and the SE squeeze).
        bn_eps: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum (PyTorch convention).
        conv_type: Convolution of the depthwise conv (``Conv2dAdaptivePadding`` for
            TensorFlow "same" padding).
        drop_path_rate: Stochastic depth of the residual branch.
        with_cp: Activation checkpointing.

    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        se_channels: int | None = None,
        act: ActName = "Swish",
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
        conv_type: ConvType | None = None,
        drop_path_rate: float = 0.0,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        self.with_cp = with_cp
        self.with_res_shortcut = stride == 1 and in_channels == out_channels
        self.with_expand_conv = mid_channels != in_channels
        if self.with_expand_conv:
            self.expand_conv = ConvBNAct(in_channels, mid_channels, 1, act=act, **bn)
        self.depthwise_conv = ConvBNAct(
            mid_channels, mid_channels, kernel_size, stride=stride, groups=mid_channels, act=act,
            conv_type=conv_type, **bn,
        )
        se = _se(mid_channels, se_channels, act)
        self.with_se = se is not None
        if se is not None:
            self.se = se
        self.linear_conv = ConvBNAct(mid_channels, out_channels, 1, act=None, **bn)
        self.drop_path: nn.Module = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _inner_forward(self, x: Tensor) -> Tensor:
        out = self.expand_conv(x) if self.with_expand_conv else x  # (B, C_mid, H, W)
        out = self.depthwise_conv(out)  # (B, C_mid, H / s, W / s)
        if self.with_se:
            out = self.se(out)
        out = self.linear_conv(out)  # (B, C_out, H / s, W / s)
        return self.drop_path(out).add_(x) if self.with_res_shortcut else out  # in place: one buffer less

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` (B, C_in, H, W)."""
        return maybe_checkpoint(self._inner_forward, x, self.with_cp)


class EdgeResidual(nn.Module):
    """Fused inverted residual: k×k expand conv → [SE] → 1×1 linear (EdgeTPU / Fused-MBConv).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        mid_channels: Output channels of the k×k conv.
        kernel_size: Kernel size of the first conv.
        stride: Stride of the first conv (1 or 2).
        se_channels: Squeeze width of an SE layer after the first conv; ``None`` for none.
        with_residual: Allow the residual connection (used when the stride is 1 and
            the channels match).
        act: Activation of the first conv (and the SE squeeze).
        bn_eps: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum (PyTorch convention).
        conv_type: Convolution of the first conv (``Conv2dAdaptivePadding`` for
            TensorFlow "same" padding).
        drop_path_rate: Stochastic depth of the residual branch.
        with_cp: Activation checkpointing.

    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        se_channels: int | None = None,
        with_residual: bool = True,
        act: ActName = "Swish",
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
        conv_type: ConvType | None = None,
        drop_path_rate: float = 0.0,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        self.with_cp = with_cp
        self.with_residual = stride == 1 and in_channels == out_channels and with_residual
        self.conv1 = ConvBNAct(
            in_channels, mid_channels, kernel_size, stride=stride, act=act, conv_type=conv_type, **bn
        )
        se = _se(mid_channels, se_channels, act)
        self.with_se = se is not None
        if se is not None:
            self.se = se
        self.conv2 = ConvBNAct(mid_channels, out_channels, 1, act=None, **bn)
        self.drop_path: nn.Module = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _inner_forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)  # (B, C_mid, H / s, W / s)
        if self.with_se:
            out = self.se(out)
        out = self.conv2(out)  # (B, C_out, H / s, W / s)
        return self.drop_path(out).add_(x) if self.with_residual else out  # in place: one buffer less

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` (B, C_in, H, W)."""
        return maybe_checkpoint(self._inner_forward, x, self.with_cp)
