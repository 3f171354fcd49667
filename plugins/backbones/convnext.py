"""ConvNeXt backbone, v1 and v2 (``use_grn``).

Papers: Liu et al., 2022, "A ConvNet for the 2020s" (arXiv:2201.03545); Woo et al.,
2023, "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders"
(arXiv:2301.00808).

Provenance: MMPretrain ``mmpretrain/models/backbones/convnext.py``: arch presets,
argument names and defaults, layer names (``downsample_layers.{i}``, ``stages.{i}.{j}``
with ``depthwise_conv``/``norm``/``pointwise_conv1``/``pointwise_conv2``/``grn``/
``gamma``, ``norm{i}`` per output), the stochastic-depth rule and
``get_layer_depth``. ConvNeXt-T/S/B/L have exactly torchvision's parameters
(``convnext_tiny`` 28,589,128 with a 1000-class head); see
``pretrain_builtins.converters.convnext`` for torchvision/timm weights. Differences
(``docs/differences.md``): negative ``out_indices`` count from the real number of
stages (MMPretrain adds 4), the caller's list is never rewritten, and unknown or
unordered indices are validation errors; LayerNorm eps (1e-6) and GELU are fixed
(MMPretrain's ``norm_cfg``/``act_cfg``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from typing_extensions import TypedDict

from pretrain.components import BaseBackbone
from pretrain_builtins.layers import (
    GRN,
    DropPath,
    LayerNorm2d,
    first_issue_error,
    freeze,
    maybe_checkpoint,
    normalise_indices,
    signed_index_issues,
)

__all__ = ["ConvNeXt", "ConvNeXtArch", "ConvNeXtBlock"]

PositiveInt = Annotated[int, Field(gt=0)]

ConvNeXtArchName = Literal[
    "atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge", "huge"
]


class ConvNeXtArch(TypedDict):
    """A custom ConvNeXt: blocks and channels of each stage (same length)."""

    depths: list[PositiveInt]
    channels: list[PositiveInt]


#: MMPretrain's ``ConvNeXt.arch_settings`` (atto..nano are the ConvNeXt V2 sizes).
ARCH_SETTINGS: dict[str, ConvNeXtArch] = {
    "atto": {"depths": [2, 2, 6, 2], "channels": [40, 80, 160, 320]},
    "femto": {"depths": [2, 2, 6, 2], "channels": [48, 96, 192, 384]},
    "pico": {"depths": [2, 2, 6, 2], "channels": [64, 128, 256, 512]},
    "nano": {"depths": [2, 2, 8, 2], "channels": [80, 160, 320, 640]},
    "tiny": {"depths": [3, 3, 9, 3], "channels": [96, 192, 384, 768]},
    "small": {"depths": [3, 3, 27, 3], "channels": [96, 192, 384, 768]},
    "base": {"depths": [3, 3, 27, 3], "channels": [128, 256, 512, 1024]},
    "large": {"depths": [3, 3, 27, 3], "channels": [192, 384, 768, 1536]},
    "xlarge": {"depths": [3, 3, 27, 3], "channels": [256, 512, 1024, 2048]},
    "huge": {"depths": [3, 3, 27, 3], "channels": [352, 704, 1408, 2816]},
}

#: LayerNorm epsilon of every ConvNeXt norm (MMPretrain's ``dict(type='LN2d', eps=1e-6)``).
_LN_EPS = 1e-6


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: 7×7 depthwise conv → LN → 1×1 (×4) → GELU → [GRN] → 1×1 → layer scale, residual.

    Args:
        in_channels: Channels of the block (input and output).
        mlp_ratio: Hidden width of the pointwise MLP as a multiple of ``in_channels``.
        linear_pw_conv: Do the pointwise convs as ``nn.Linear`` on channels-last
            tensors (the official layout) instead of 1×1 ``nn.Conv2d``.
        drop_path_rate: Stochastic depth of the residual branch.
        layer_scale_init_value: Initial per-channel scale ``gamma``; 0 disables it.
        use_grn: Global response normalisation after the activation (ConvNeXt V2).
        with_cp: Activation checkpointing.

    """

    def __init__(
        self,
        in_channels: int,
        *,
        mlp_ratio: float = 4.0,
        linear_pw_conv: bool = True,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        use_grn: bool = False,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.linear_pw_conv = linear_pw_conv
        self.depthwise_conv = nn.Conv2d(in_channels, in_channels, 7, padding=3, groups=in_channels)
        self.norm = LayerNorm2d(in_channels, eps=_LN_EPS)
        mid_channels = int(mlp_ratio * in_channels)
        if linear_pw_conv:
            self.pointwise_conv1: nn.Module = nn.Linear(in_channels, mid_channels)
            self.pointwise_conv2: nn.Module = nn.Linear(mid_channels, in_channels)
        else:
            self.pointwise_conv1 = nn.Conv2d(in_channels, mid_channels, 1)
            self.pointwise_conv2 = nn.Conv2d(mid_channels, in_channels, 1)
        self.act = nn.GELU()
        self.grn = GRN(mid_channels) if use_grn else None
        self.gamma = (
            nn.Parameter(torch.full((in_channels,), float(layer_scale_init_value)))
            if layer_scale_init_value > 0
            else None
        )
        self.drop_path: nn.Module = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _inner_forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.depthwise_conv(x)  # (B, C, H, W)
        if self.linear_pw_conv:
            x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
            x = self.norm(x, data_format="channel_last")
            x = self.act(self.pointwise_conv1(x))  # (B, H, W, 4C)
            if self.grn is not None:
                x = self.grn(x, data_format="channel_last")
            x = self.pointwise_conv2(x)  # (B, H, W, C)
            if self.gamma is not None:
                x = x * self.gamma  # per-channel scale, last dim
            x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        else:
            x = self.norm(x, data_format="channel_first")
            x = self.act(self.pointwise_conv1(x))  # (B, 4C, H, W)
            if self.grn is not None:
                x = self.grn(x, data_format="channel_first")
            x = self.pointwise_conv2(x)  # (B, C, H, W)
            if self.gamma is not None:
                x = x * self.gamma.view(1, -1, 1, 1)
        return shortcut + self.drop_path(x)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` (B, C, H, W)."""
        return maybe_checkpoint(self._inner_forward, x, self.with_cp)


class ConvNeXt(BaseBackbone):
    """ConvNeXt v1/v2 backbone: patchify stem, four stages of ConvNeXt blocks, a LayerNorm per output.

    With ``gap_before_final_norm`` (the default, as in classification) each output
    is the globally averaged, normalised stage output (B, C); otherwise the
    normalised map (B, C, H, W). Strides are 4, 8, 16, 32. ConvNeXt V2 is
    ``use_grn = true`` with ``layer_scale_init_value = 0``.

    Args:
        arch: A preset: ``atto`` (depths 2-2-6-2, channels 40-80-160-320), ``femto``
            (2-2-6-2, 48-96-192-384), ``pico`` (2-2-6-2, 64-128-256-512), ``nano``
            (2-2-8-2, 80-160-320-640), ``tiny`` (3-3-9-3, 96-192-384-768), ``small``
            (3-3-27-3, 96-192-384-768), ``base`` (3-3-27-3, 128-256-512-1024), ``large``
            (3-3-27-3, 192-384-768-1536), ``xlarge`` (3-3-27-3, 256-512-1024-2048),
            ``huge`` (3-3-27-3, 352-704-1408-2816); or a table with ``depths`` and
            ``channels`` lists of equal length.
        in_channels: Channels of the input images.
        stem_patch_size: Kernel and stride of the patchify stem conv.
        linear_pw_conv: Pointwise convs as ``nn.Linear`` on channels-last tensors (the
            official layout); false uses 1×1 convs (timm's ``conv_mlp`` models).
        use_grn: Global response normalisation in every block (ConvNeXt V2).
        drop_path_rate: Maximum stochastic-depth rate, rising linearly over all blocks.
        layer_scale_init_value: Initial value of each block's layer scale ``gamma``;
            0 disables layer scale (ConvNeXt V2).
        out_indices: Stages to output (0..3; negative values count from the end,
            -1 is the last stage), in increasing order.
        frozen_stages: Freeze (no grad, eval mode) the first N stages with their
            downsampling layers; 0 freezes nothing.
        gap_before_final_norm: Average-pool each output before its LayerNorm and
            return (B, C) vectors; false returns normalised (B, C, H, W) maps.
        with_cp: Activation checkpointing in every block: less memory, slower.

    """

    default_init: ClassVar[list[dict[str, Any]]] = [
        {"type": "TruncNormal", "layer": ["Conv2d", "Linear"], "std": 0.02, "bias": 0.0},
        {"type": "Constant", "layer": ["LayerNorm"], "val": 1.0, "bias": 0.0},
    ]

    #: A small instance for ``pretrain.testing``.
    example_config: ClassVar[dict[str, Any]] = {
        "arch": {"depths": [1, 1, 2, 1], "channels": [8, 16, 24, 32]},
        "out_indices": [1, 3],
        "use_grn": True,
    }

    arch_settings: ClassVar[dict[str, ConvNeXtArch]] = ARCH_SETTINGS

    def __init__(
        self,
        *,
        arch: ConvNeXtArchName | ConvNeXtArch = "tiny",
        in_channels: PositiveInt = 3,
        stem_patch_size: PositiveInt = 4,
        linear_pw_conv: bool = True,
        use_grn: bool = False,
        drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        layer_scale_init_value: Annotated[float, Field(ge=0.0)] = 1e-6,
        out_indices: int | tuple[int, ...] = -1,
        frozen_stages: Annotated[int, Field(ge=0)] = 0,
        gap_before_final_norm: bool = True,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        params = {"arch": arch, "out_indices": out_indices, "frozen_stages": frozen_stages}
        first_issue_error(type(self), type(self).spec_issues(params))
        settings = self.resolve_arch(arch)
        self.arch = arch if isinstance(arch, str) else dict(arch)
        self.depths = tuple(settings["depths"])
        self.channels = tuple(settings["channels"])
        self.num_stages = len(self.depths)
        self.out_indices = normalise_indices(out_indices, self.num_stages)
        self.frozen_stages = frozen_stages
        self.gap_before_final_norm = gap_before_final_norm
        self.with_cp = with_cp

        # Stochastic depth rising linearly over every block (plain floats: meta-safe).
        total = sum(self.depths)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(
                nn.Conv2d(in_channels, self.channels[0], stem_patch_size, stride=stem_patch_size),
                LayerNorm2d(self.channels[0], eps=_LN_EPS),
            )
        )
        self.stages = nn.ModuleList()
        block_idx = 0
        for i, (depth, channels) in enumerate(zip(self.depths, self.channels, strict=True)):
            if i >= 1:
                self.downsample_layers.append(
                    nn.Sequential(
                        LayerNorm2d(self.channels[i - 1], eps=_LN_EPS),
                        nn.Conv2d(self.channels[i - 1], channels, 2, stride=2),
                    )
                )
            self.stages.append(
                nn.Sequential(
                    *(
                        ConvNeXtBlock(
                            channels,
                            linear_pw_conv=linear_pw_conv,
                            drop_path_rate=dpr[block_idx + j],
                            layer_scale_init_value=layer_scale_init_value,
                            use_grn=use_grn,
                            with_cp=with_cp,
                        )
                        for j in range(depth)
                    )
                )
            )
            block_idx += depth
            if i in self.out_indices:
                self.add_module(f"norm{i}", LayerNorm2d(channels, eps=_LN_EPS))
        #: Channels of each returned feature, in output order.
        self.out_channels = tuple(self.channels[i] for i in self.out_indices)
        #: Channels of the last stage (MMPretrain's ``feat_dim``).
        self.feat_dim = self.channels[-1]
        self._freeze_stages()

    # ------------------------------------------------------------------ spec checks

    @classmethod
    def resolve_arch(cls, arch: str | Mapping[str, Any]) -> ConvNeXtArch:
        """The ``depths``/``channels`` of a preset name or custom table."""
        if isinstance(arch, str):
            return cls.arch_settings[arch]
        return {"depths": list(arch["depths"]), "channels": list(arch["channels"])}

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """Arch table lengths, ``out_indices`` and ``frozen_stages`` against the number of stages."""
        arch = params.get("arch", "tiny")
        if isinstance(arch, str):
            if arch not in cls.arch_settings:
                yield "arch", f"unknown ConvNeXt arch {arch!r}; choose one of {', '.join(cls.arch_settings)}"
                return
        elif isinstance(arch, Mapping):
            depths, channels = list(arch.get("depths", [])), list(arch.get("channels", []))
            if not depths or len(depths) != len(channels):
                yield "arch", (
                    f"depths ({len(depths)} entries) and channels ({len(channels)} entries) must be "
                    "non-empty lists of the same length, one entry per stage"
                )
                return
        num_stages = len(cls.resolve_arch(arch)["depths"])
        yield from signed_index_issues("out_indices", params.get("out_indices", -1), num_stages)
        frozen = int(params.get("frozen_stages", 0))
        if frozen > num_stages:
            yield "frozen_stages", f"is {frozen} but the arch has {num_stages} stages; use 0..{num_stages}"

    # ------------------------------------------------------------------ freezing

    def _freeze_stages(self) -> None:
        for i in range(self.frozen_stages):
            freeze(self.downsample_layers[i])
            freeze(self.stages[i])

    def train(self, mode: bool = True) -> ConvNeXt:
        """Set train/eval mode, keeping frozen stages in eval mode."""
        super().train(mode)
        self._freeze_stages()
        return self

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """(B, C_in, H, W) images -> one feature per ``out_indices`` entry."""
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(self.downsample_layers[i](x))  # (B, C_i, H / 2^(i+2), W / 2^(i+2))
            if i in self.out_indices:
                norm = getattr(self, f"norm{i}")
                if self.gap_before_final_norm:
                    gap = x.mean([-2, -1], keepdim=True)  # (B, C_i, 1, 1)
                    outs.append(norm(gap).flatten(1))  # (B, C_i)
                else:
                    outs.append(norm(x))
        return tuple(outs)

    # ------------------------------------------------------------------ layer-wise LR decay

    def get_layer_depth(self, param_name: str, prefix: str = "") -> tuple[int, int]:
        """Layer id of a parameter for layer-wise LR decay (MMPretrain's ConvNeXt rule).

        The stem is layer 0, stages 0 and 1 (with their downsampling) layers 1-2,
        stage 2 is split into groups of three blocks, stage 3 is the last backbone
        layer, the output norms one more, and anything outside the backbone (e.g. the
        head) the last id.

        Args:
            param_name: Parameter name, e.g. ``backbone.stages.2.4.gamma``.
            prefix: The backbone's prefix in ``param_name`` (``"backbone."`` for a model's names).

        Returns:
            ``(layer_id, num_layer_ids)``.

        """
        max_layer_id = 12 if self.depths[-2] > 9 else 6
        if not param_name.startswith(prefix):
            return max_layer_id + 1, max_layer_id + 2
        name = param_name[len(prefix):]
        parts = name.split(".")
        if name.startswith("downsample_layers"):
            stage_id = int(parts[1])
            layer_id = 0 if stage_id == 0 else (stage_id + 1 if stage_id in (1, 2) else max_layer_id)
        elif name.startswith("stages"):
            stage_id, block_id = int(parts[1]), int(parts[2])
            if stage_id in (0, 1):
                layer_id = stage_id + 1
            elif stage_id == 2:
                layer_id = 3 + block_id // 3
            else:
                layer_id = max_layer_id
        else:
            layer_id = max_layer_id + 1
        return layer_id, max_layer_id + 2
