"""MobileNetV3 backbone (small, small_075, small_050, large).

Paper: Howard et al., 2019, "Searching for MobileNetV3" (arXiv:1905.02244).

Provenance: MMPretrain ``mmpretrain/models/backbones/mobilenet_v3.py`` and
``mmpretrain/models/utils/inverted_residual.py``: the architecture tables,
layer names (``layer0`` stem, ``layer1``..``layerN`` inverted residuals with
``expand_conv``/``depthwise_conv``/``se``/``linear_conv``, a final 1×1 conv),
BatchNorm ``eps=1e-3, momentum=0.01`` (``norm_cfg``), SE ratio 4 with ReLU then hard-sigmoid,
and hard-swish where the table says ``HSwish``. For ``small`` and ``large``
the parameters equal torchvision's ``mobilenet_v3_*().features``. Difference:
MMPretrain's default init also has ``Normal(layer="Linear", std=0.01)``, which
matches nothing in this backbone (it has no Linear layer); our init rules must
match a layer, so that rule is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from pretrain.components import BaseBackbone
from pretrain_builtins.layers import (
    ActName,
    BNCfg,
    ConvBNAct,
    FrozenStagesMixin,
    SELayer,
    first_issue_error,
    freeze,
    index_issues,
    maybe_checkpoint,
)

__all__ = ["MobileNetV3", "MobileNetV3Arch", "MobileNetV3InvertedResidual"]

MobileNetV3Arch = Literal["small", "small_075", "small_050", "large"]

#: MobileNetV3 BatchNorm settings (TensorFlow's defaults, as in the paper's code).
_BN_CFG: BNCfg = {"type": "BN", "eps": 1e-3, "momentum": 0.01}


class MobileNetV3InvertedResidual(nn.Module):
    """Inverted residual with optional squeeze-and-excitation (MobileNetV3 bneck).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        mid_channels: Channels of the depthwise conv; an expansion 1×1 conv
            exists only when they differ from ``in_channels``.
        kernel_size: Depthwise kernel size.
        stride: Depthwise stride (1 or 2).
        with_se: Insert an SE layer after the depthwise conv.
        act: Activation of the expansion and depthwise convs.
        with_cp: Activation checkpointing.
        bn_eps: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum (PyTorch convention).

    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        with_se: bool = False,
        act: ActName = "ReLU",
        with_cp: bool = False,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.with_res_shortcut = stride == 1 and in_channels == out_channels
        self.with_cp = with_cp
        self.with_expand_conv = mid_channels != in_channels
        if self.with_expand_conv:
            self.expand_conv = ConvBNAct(in_channels, mid_channels, 1, act=act, **bn)
        self.depthwise_conv = ConvBNAct(
            mid_channels, mid_channels, kernel_size, stride=stride, groups=mid_channels,
            act=act, **bn,
        )
        self.se: nn.Module = SELayer(mid_channels, ratio=4) if with_se else nn.Identity()
        self.linear_conv = ConvBNAct(mid_channels, out_channels, 1, act=None, **bn)

    def _inner_forward(self, x: Tensor) -> Tensor:
        out = self.expand_conv(x) if self.with_expand_conv else x  # (B, C_mid, H, W)
        out = self.se(self.depthwise_conv(out))  # (B, C_mid, H / s, W / s)
        out = self.linear_conv(out)  # (B, C_out, H / s, W / s)
        return out.add_(x) if self.with_res_shortcut else out  # in place, like torchvision

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` (B, C_in, H, W)."""
        return maybe_checkpoint(self._inner_forward, x, self.with_cp)


class MobileNetV3(FrozenStagesMixin, BaseBackbone):
    """MobileNetV3 backbone; by default returns the last layer (576 ch small, 960 ch large).

    Layer 0 is the stem (3×3 stride-2 conv, 16 channels, hard-swish), layers
    1..N the bnecks of ``arch`` and layer N+1 the final 1×1 conv (N = 11 for
    the small archs, 15 for large).

    Args:
        arch: Architecture table: ``small``, ``small_075``, ``small_050`` or ``large``.
        out_indices: Layers to return, strictly increasing, each in 0..N+1;
            default: the last layer (12 for small archs, 16 for large).
        frozen_stages: Freeze (no grad, eval mode) layers 0..N; -1 freezes nothing.
        norm_eval: Keep every BatchNorm in eval mode during training.
        with_cp: Activation checkpointing in every bneck: less memory, slower.
        norm_cfg: BatchNorm settings: ``{type = "BN", eps = 1e-3, momentum = 0.01}``
            (MMPretrain, torchvision); timm's ``mobilenetv3_*_100`` weights use ``eps = 1e-5``.

    """

    default_init: ClassVar[list[dict[str, Any]]] = [
        {"type": "Kaiming", "layer": ["Conv2d"], "nonlinearity": "leaky_relu"},
        {"type": "Constant", "layer": ["BatchNorm2d"], "val": 1},
    ]

    #: A small instance for ``pretrain.testing``.
    example_config: ClassVar[dict[str, Any]] = {"arch": "small_050", "out_indices": [3, 12]}

    #: Per bneck: kernel size, mid channels, out channels, with_se, activation, stride.
    arch_settings: ClassVar[dict[str, tuple[tuple[int, int, int, bool, ActName, int], ...]]] = {
        "small": (
            (3, 16, 16, True, "ReLU", 2),
            (3, 72, 24, False, "ReLU", 2),
            (3, 88, 24, False, "ReLU", 1),
            (5, 96, 40, True, "HSwish", 2),
            (5, 240, 40, True, "HSwish", 1),
            (5, 240, 40, True, "HSwish", 1),
            (5, 120, 48, True, "HSwish", 1),
            (5, 144, 48, True, "HSwish", 1),
            (5, 288, 96, True, "HSwish", 2),
            (5, 576, 96, True, "HSwish", 1),
            (5, 576, 96, True, "HSwish", 1),
        ),
        "small_075": (
            (3, 16, 16, True, "ReLU", 2),
            (3, 72, 24, False, "ReLU", 2),
            (3, 88, 24, False, "ReLU", 1),
            (5, 96, 32, True, "HSwish", 2),
            (5, 192, 32, True, "HSwish", 1),
            (5, 192, 32, True, "HSwish", 1),
            (5, 96, 40, True, "HSwish", 1),
            (5, 120, 40, True, "HSwish", 1),
            (5, 240, 72, True, "HSwish", 2),
            (5, 432, 72, True, "HSwish", 1),
            (5, 432, 72, True, "HSwish", 1),
        ),
        "small_050": (
            (3, 16, 8, True, "ReLU", 2),
            (3, 40, 16, False, "ReLU", 2),
            (3, 56, 16, False, "ReLU", 1),
            (5, 64, 24, True, "HSwish", 2),
            (5, 144, 24, True, "HSwish", 1),
            (5, 144, 24, True, "HSwish", 1),
            (5, 72, 24, True, "HSwish", 1),
            (5, 72, 24, True, "HSwish", 1),
            (5, 144, 48, True, "HSwish", 2),
            (5, 288, 48, True, "HSwish", 1),
            (5, 288, 48, True, "HSwish", 1),
        ),
        "large": (
            (3, 16, 16, False, "ReLU", 1),
            (3, 64, 24, False, "ReLU", 2),
            (3, 72, 24, False, "ReLU", 1),
            (5, 72, 40, True, "ReLU", 2),
            (5, 120, 40, True, "ReLU", 1),
            (5, 120, 40, True, "ReLU", 1),
            (3, 240, 80, False, "HSwish", 2),
            (3, 200, 80, False, "HSwish", 1),
            (3, 184, 80, False, "HSwish", 1),
            (3, 184, 80, False, "HSwish", 1),
            (3, 480, 112, True, "HSwish", 1),
            (3, 672, 112, True, "HSwish", 1),
            (5, 672, 160, True, "HSwish", 2),
            (5, 960, 160, True, "HSwish", 1),
            (5, 960, 160, True, "HSwish", 1),
        ),
    }

    def __init__(
        self,
        *,
        arch: MobileNetV3Arch = "small",
        out_indices: tuple[int, ...] | None = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        norm_cfg: BNCfg = _BN_CFG,
    ) -> None:
        super().__init__()
        params = {"arch": arch, "out_indices": out_indices, "frozen_stages": frozen_stages}
        bn = {"bn_eps": float(norm_cfg.get("eps", 1e-5)), "bn_momentum": float(norm_cfg.get("momentum", 0.1))}
        first_issue_error(type(self), type(self).spec_issues(params))
        settings = self.arch_settings[arch]
        self.arch = arch
        self.out_indices = tuple(out_indices) if out_indices is not None else (len(settings) + 1,)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        self.layers: list[str] = ["layer0"]
        channels = [16]
        self.layer0 = ConvBNAct(3, 16, 3, stride=2, act="HSwish", **bn)
        in_ch = 16
        mid_ch = 16
        for i, (kernel, mid_ch, out_ch, with_se, act, stride) in enumerate(settings):
            block = MobileNetV3InvertedResidual(
                in_ch, out_ch, mid_ch, kernel_size=kernel, stride=stride, with_se=with_se,
                act=act, with_cp=with_cp, **bn,
            )
            self.add_module(f"layer{i + 1}", block)
            self.layers.append(f"layer{i + 1}")
            channels.append(out_ch)
            in_ch = out_ch
        # The last conv widens to the last bneck's mid channels (576 small, 960 large).
        last = f"layer{len(settings) + 1}"
        self.add_module(last, ConvBNAct(in_ch, mid_ch, 1, act="HSwish", **bn))
        self.layers.append(last)
        channels.append(mid_ch)
        #: Channels of each returned feature map, in output order.
        self.out_channels = tuple(channels[i] for i in self.out_indices)
        self.feat_dim = mid_ch
        self._freeze_stages()

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """``out_indices`` and ``frozen_stages`` must fit the chosen ``arch``."""
        arch = params.get("arch", "small")
        if arch not in cls.arch_settings:
            return
        count = len(cls.arch_settings[arch]) + 2
        indices = params.get("out_indices")
        if indices is not None:
            yield from index_issues("out_indices", indices, count, f"{arch} layer")
        frozen = int(params.get("frozen_stages", -1))
        if not -1 <= frozen < count:
            yield "frozen_stages", f"is {frozen}; MobileNetV3 {arch} allows -1..{count - 1}"

    def _freeze_stages(self) -> None:
        for i in range(self.frozen_stages + 1):
            freeze(getattr(self, f"layer{i}"))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Return the feature maps of ``out_indices``; ``x`` is (B, 3, H, W)."""
        return self._forward_stages(x, self.layers)
