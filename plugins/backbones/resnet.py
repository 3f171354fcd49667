"""ResNet backbones: ResNet (V1b), ResNetV1c and ResNetV1d.

Paper: He et al., 2016, "Deep Residual Learning for Image Recognition"
(arXiv:1512.03385); the V1c/V1d variants are from He et al., 2019, "Bag of
Tricks for Image Classification with Convolutional Neural Networks"
(arXiv:1812.01187).

Provenance: MMPretrain ``mmpretrain/models/backbones/resnet.py``. Layer names
(``conv1``/``bn1``/``layerN.i.convK``/``bnK``/``downsample``, ``stem`` for the
deep stem) and semantics are MMPretrain's, which also makes the state dict of a
``style="pytorch"`` ResNet identical to torchvision's and timm's apart from the
classifier. Differences (see ``docs/differences.md``): negative, repeated or
unsorted ``out_indices`` and out-of-range ``frozen_stages`` are validation
errors instead of an empty output / ``AttributeError``; ``get_layer_depth``
works for every depth (MMPretrain raises ``NotImplementedError`` for ResNet-18)
and strips a caller-given prefix instead of assuming ``backbone.``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseBackbone
from pretrain_builtins.layers import (
    ConvBNAct,
    DropPath,
    FrozenStagesMixin,
    first_issue_error,
    freeze,
    index_issues,
    inherit_args_doc,
    maybe_checkpoint,
)

__all__ = ["BasicBlock", "Bottleneck", "ResLayer", "ResNet", "ResNetV1c", "ResNetV1d"]

#: Below this rate a block gets no DropPath module at all (MMPretrain's ``eps``).
_DROP_PATH_EPS = 1.0e-5

PositiveInt = Annotated[int, Field(gt=0)]
ResNetDepth = Literal[18, 34, 50, 101, 152]


class _ResidualBlock(nn.Module):
    """Shared plumbing of ``BasicBlock`` and ``Bottleneck``.

    Subclasses call :meth:`_init_sizes`, build their convolutions, call
    :meth:`_init_shortcut`, and define ``_inner_forward`` and ``last_norm``.
    """

    relu: nn.ReLU
    with_cp: bool

    def _init_sizes(self, in_channels: int, out_channels: int, expansion: int, with_cp: bool) -> None:
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.expansion = expansion
        self.mid_channels = out_channels // expansion
        self.with_cp = with_cp

    def _init_shortcut(self, downsample: nn.Module | None, drop_path_rate: float) -> None:
        # Registered after the convolutions: keeps the module (and so init/RNG) order.
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path: nn.Module = (
            DropPath(drop_path_rate) if drop_path_rate > _DROP_PATH_EPS else nn.Identity()
        )

    def _inner_forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Residual block; ``x`` is (B, C_in, H, W)."""
        return self.relu(maybe_checkpoint(self._inner_forward, x, self.with_cp))


class BasicBlock(_ResidualBlock):
    """Two 3×3 convolutions with an identity (or projected) shortcut; ResNet-18/34.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        expansion: ``out_channels / mid_channels``; must be 1 for this block.
        stride: Stride of the first 3×3 convolution.
        dilation: Dilation of the first 3×3 convolution.
        downsample: Projection of the shortcut when shape changes, else ``None``.
        style: Unused (kept for a uniform block interface with ``Bottleneck``).
        with_cp: Recompute activations in backward (activation checkpointing).
        drop_path_rate: Stochastic-depth rate of the residual branch.

    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        expansion: int = 1,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        style: str = "pytorch",
        with_cp: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if expansion != 1:
            raise ValueError(f"BasicBlock expansion must be 1, got {expansion}")
        del style  # no stride placement choice with two 3x3 convs
        self._init_sizes(in_channels, out_channels, expansion, with_cp)
        self.conv1 = nn.Conv2d(
            in_channels, self.mid_channels, 3, stride=stride, padding=dilation,
            dilation=dilation, bias=False,
        )
        self.bn1 = nn.BatchNorm2d(self.mid_channels)
        self.conv2 = nn.Conv2d(self.mid_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self._init_shortcut(downsample, drop_path_rate)

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        """The norm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn2

    def _inner_forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, C_out, H', W')
        out = self.relu(self.bn1(self.conv1(x)))  # (B, C_mid, H', W')
        out = self.bn2(self.conv2(out))  # (B, C_out, H', W')
        return self.drop_path(out).add_(identity)  # in place, like torchvision: one buffer less


class Bottleneck(_ResidualBlock):
    """1×1 reduce → 3×3 → 1×1 expand with a shortcut; ResNet-50/101/152.

    Args:
        in_channels: Input channels.
        out_channels: Output channels (``expansion`` × the 3×3 conv's channels).
        expansion: ``out_channels / mid_channels``.
        stride: Stride of the block.
        dilation: Dilation of the 3×3 convolution.
        downsample: Projection of the shortcut when shape changes, else ``None``.
        style: ``pytorch`` puts the stride on the 3×3 conv (ResNet v1.5, as
            torchvision), ``caffe`` on the first 1×1 conv (the original paper).
        with_cp: Recompute activations in backward (activation checkpointing).
        drop_path_rate: Stochastic-depth rate of the residual branch.
        groups: Groups of the 3×3 conv (ResNeXt, RegNet); with groups > 1 its width
            is ``groups * width_per_group * mid // base_width`` (MMPretrain's ResNeXt rule).
        width_per_group: Channels per group at ``base_width``.
        base_width: The stage width ``width_per_group`` refers to (64 for ResNeXt).

    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        expansion: int = 4,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        style: str = "pytorch",
        with_cp: bool = False,
        drop_path_rate: float = 0.0,
        groups: int = 1,
        width_per_group: int = 4,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        if out_channels % expansion:
            raise ValueError(f"out_channels {out_channels} is not divisible by expansion {expansion}")
        self._init_sizes(in_channels, out_channels, expansion, with_cp)
        if groups != 1:
            self.mid_channels = groups * width_per_group * self.mid_channels // base_width
        mid = self.mid_channels
        conv1_stride, conv2_stride = (1, stride) if style == "pytorch" else (stride, 1)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, stride=conv1_stride, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(
            mid, mid, 3, stride=conv2_stride, padding=dilation, dilation=dilation, groups=groups,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self._init_shortcut(downsample, drop_path_rate)

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        """The norm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn3

    def _inner_forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, C_out, H', W')
        out = self.relu(self.bn1(self.conv1(x)))  # (B, C_mid, H, W) (caffe: H', W')
        out = self.relu(self.bn2(self.conv2(out)))  # (B, C_mid, H', W')
        out = self.bn3(self.conv3(out))  # (B, C_out, H', W')
        return self.drop_path(out).add_(identity)  # in place, like torchvision: one buffer less


class ResLayer(nn.Sequential):
    """One ResNet stage: ``num_blocks`` blocks, the first one strided/projecting.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        num_blocks: Number of blocks.
        in_channels: Input channels of the stage.
        out_channels: Output channels of every block.
        expansion: Block expansion ratio.
        stride: Stride of the first block.
        dilation: Dilation of the blocks' 3×3 convolutions.
        avg_down: Downsample the shortcut with an ``AvgPool2d`` followed by a
            stride-1 1×1 conv (ResNetV1d) instead of a strided 1×1 conv.
        style: Stride placement in bottlenecks (``pytorch`` or ``caffe``).
        with_cp: Activation checkpointing in every block.
        drop_path_rates: Stochastic-depth rate of each block.
        block_kwargs: Further keyword arguments of every block (``groups`` ...).

    """

    def __init__(
        self,
        block: type[nn.Module],
        num_blocks: int,
        in_channels: int,
        out_channels: int,
        *,
        expansion: int,
        stride: int = 1,
        dilation: int = 1,
        avg_down: bool = False,
        style: str = "pytorch",
        with_cp: bool = False,
        drop_path_rates: Sequence[float] | None = None,
        **block_kwargs: Any,
    ) -> None:
        rates = list(drop_path_rates) if drop_path_rates is not None else [0.0] * num_blocks
        if len(rates) != num_blocks:
            raise ValueError(f"got {len(rates)} drop-path rates for {num_blocks} blocks")
        downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            layers: list[nn.Module] = []
            conv_stride = stride
            if avg_down and stride != 1:
                conv_stride = 1
                layers.append(
                    nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                )
            layers += [
                nn.Conv2d(in_channels, out_channels, 1, stride=conv_stride, bias=False),
                nn.BatchNorm2d(out_channels),
            ]
            downsample = nn.Sequential(*layers)
        blocks = []
        for i in range(num_blocks):
            blocks.append(
                block(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    expansion=expansion,
                    stride=stride if i == 0 else 1,
                    dilation=dilation,
                    downsample=downsample if i == 0 else None,
                    style=style,
                    with_cp=with_cp,
                    drop_path_rate=rates[i],
                    **block_kwargs,
                )
            )
        super().__init__(*blocks)


class ResNet(FrozenStagesMixin, BaseBackbone):
    """ResNet backbone (V1b: 7×7 stem, stride on the 3×3 conv); returns one map per out index.

    ResNet-18 at 224×224 gives (64, 56²), (128, 28²), (256, 14²), (512, 7²) for
    stages 0..3; the ``out_channels`` attribute lists the channels of the
    selected stages, ``feat_dim`` those of the last stage built.

    Args:
        depth: Network depth: 18 and 34 use BasicBlock, 50/101/152 Bottleneck.
        in_channels: Channels of the input images.
        stem_channels: Output channels of the stem.
        base_channels: Channels of the first stage's 3×3 convs; stage i outputs
            ``base_channels * expansion * 2**i`` channels.
        expansion: Block expansion ratio; default 1 for BasicBlock, 4 for Bottleneck.
        num_stages: How many of the 4 stages to build.
        strides: Stride of the first block of each stage (one per stage).
        dilations: Dilation of each stage (one per stage).
        out_indices: Stages whose outputs are returned, strictly increasing, each
            in 0..num_stages-1.
        style: ``pytorch`` puts a bottleneck's stride on its 3×3 conv (torchvision,
            ResNet v1.5); ``caffe`` on its first 1×1 conv.
        deep_stem: Replace the 7×7 stem conv with three 3×3 convs (ResNetV1c).
        avg_down: Downsample shortcuts with AvgPool + 1×1 conv (ResNetV1d).
        frozen_stages: Freeze (no grad, eval mode) the stem and stages 1..N;
            -1 freezes nothing, 0 only the stem.
        norm_eval: Keep every BatchNorm in eval mode during training (frozen
            running statistics), e.g. when fine-tuning with small batches.
        with_cp: Activation checkpointing in every block: less memory, slower.
        zero_init_residual: After init, zero the last BatchNorm weight of each
            residual branch so that every block starts as an identity.
        drop_path_rate: Maximum stochastic-depth rate, increased linearly over blocks.

    """

    default_init: ClassVar[list[dict[str, Any]]] = [
        {"type": "Kaiming", "layer": ["Conv2d"]},
        {"type": "Constant", "val": 1, "layer": ["_BatchNorm", "GroupNorm"]},
    ]

    #: depth -> (block, blocks per stage).
    arch_settings: ClassVar[dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, ...]]]] = {
        18: (BasicBlock, (2, 2, 2, 2)),
        34: (BasicBlock, (3, 4, 6, 3)),
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
        152: (Bottleneck, (3, 8, 36, 3)),
    }

    #: A small instance for ``pretrain.testing`` (inherited by the variants).
    example_config: ClassVar[dict[str, Any]] = {
        "depth": 18, "stem_channels": 8, "base_channels": 8, "out_indices": [1, 3],
    }

    #: Fields a variant pins (ResNetV1c/V1d/ResNet_CIFAR); checked by ``spec_issues``.
    fixed_fields: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        *,
        depth: ResNetDepth,
        in_channels: PositiveInt = 3,
        stem_channels: PositiveInt = 64,
        base_channels: PositiveInt = 64,
        expansion: PositiveInt | None = None,
        num_stages: Annotated[int, Field(ge=1, le=4)] = 4,
        strides: tuple[PositiveInt, ...] = (1, 2, 2, 2),
        dilations: tuple[PositiveInt, ...] = (1, 1, 1, 1),
        out_indices: tuple[int, ...] = (3,),
        style: Literal["pytorch", "caffe"] = "pytorch",
        deep_stem: bool = False,
        avg_down: bool = False,
        frozen_stages: Annotated[int, Field(ge=-1)] = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        zero_init_residual: bool = True,
        drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
    ) -> None:
        super().__init__()
        params = dict(
            depth=depth, expansion=expansion, num_stages=num_stages, strides=strides,
            dilations=dilations, out_indices=out_indices, deep_stem=deep_stem, avg_down=avg_down,
            frozen_stages=frozen_stages, stem_channels=stem_channels,
        )
        first_issue_error(type(self), type(self).spec_issues(params))
        self.depth = depth
        self.stem_channels = stem_channels
        self.base_channels = base_channels
        self.num_stages = num_stages
        self.strides = tuple(strides)
        self.dilations = tuple(dilations)
        self.out_indices = tuple(out_indices)
        self.style = style
        self.deep_stem = deep_stem
        self.avg_down = avg_down
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.zero_init_residual = zero_init_residual
        self.block, stage_blocks = self.arch_settings[depth]
        self.stage_blocks = stage_blocks[:num_stages]
        self.expansion = expansion if expansion is not None else _default_expansion(self.block)

        self._make_stem_layer(in_channels, stem_channels)

        # Stochastic depth grows linearly over all blocks of the *full* network,
        # as MMPretrain does (so num_stages < 4 never reaches drop_path_rate).
        total = sum(stage_blocks)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.res_layers: list[str] = []
        stage_channels: list[int] = []
        in_ch, out_ch = stem_channels, base_channels * self.expansion
        for i, num_blocks in enumerate(self.stage_blocks):
            layer = self.make_res_layer(
                block=self.block, num_blocks=num_blocks, in_channels=in_ch, out_channels=out_ch,
                expansion=self.expansion, stride=self.strides[i], dilation=self.dilations[i],
                avg_down=avg_down, style=style, with_cp=with_cp,
                drop_path_rates=dpr[:num_blocks],
            )
            dpr = dpr[num_blocks:]
            name = f"layer{i + 1}"
            self.add_module(name, layer)
            self.res_layers.append(name)
            stage_channels.append(out_ch)
            in_ch, out_ch = out_ch, out_ch * 2
        #: Channels of each returned feature map, in output order.
        self.out_channels = tuple(stage_channels[i] for i in self.out_indices)
        #: Channels of the last stage (MMPretrain's ``feat_dim``).
        self.feat_dim = stage_channels[-1]
        self._freeze_stages()

    # ------------------------------------------------------------------ validation

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """Cross-field checks: per-stage tuple lengths, ``out_indices``, ``frozen_stages``."""
        for name, value in cls.fixed_fields.items():
            if name in params and params[name] != value:
                yield name, (
                    f"{cls.__name__} always uses {name}={value!r}; use ResNet to choose it freely"
                )
        depth = params.get("depth")
        num_stages = int(params.get("num_stages", 4))
        for name in ("strides", "dilations"):
            values = params.get(name)
            if values is not None and len(values) != num_stages:
                yield name, (
                    f"has {len(values)} entries but num_stages is {num_stages}; give one per stage"
                )
        yield from index_issues("out_indices", params.get("out_indices", (3,)), num_stages)
        frozen = int(params.get("frozen_stages", -1))
        if frozen > num_stages:
            yield "frozen_stages", (
                f"is {frozen} but only {num_stages} stages exist; use -1..{num_stages}"
            )
        expansion = params.get("expansion")
        block = cls.arch_settings[depth][0] if depth in cls.arch_settings else None
        if expansion not in (None, 1) and block is BasicBlock:
            yield "expansion", f"ResNet-{depth} uses BasicBlock, whose expansion must be 1"
        if params.get("deep_stem") and int(params.get("stem_channels", 64)) < 2:
            yield "stem_channels", "must be at least 2 with deep_stem (its first convs use half)"

    # ------------------------------------------------------------------ construction

    def make_res_layer(self, **kwargs: Any) -> nn.Module:
        """Build one stage; variants (ResNeXt, SE-ResNet) add block arguments here."""
        return ResLayer(**kwargs)

    def _make_stem_layer(self, in_channels: int, stem_channels: int) -> None:
        if self.deep_stem:
            half = stem_channels // 2
            self.stem = nn.Sequential(
                ConvBNAct(in_channels, half, 3, stride=2),
                ConvBNAct(half, half, 3),
                ConvBNAct(half, stem_channels, 3),
            )
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_channels)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def _stem_modules(self) -> list[nn.Module]:
        return [self.stem] if self.deep_stem else [self.conv1, self.bn1]

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:
            for module in self._stem_modules():
                freeze(module)
        for i in range(1, self.frozen_stages + 1):
            freeze(getattr(self, f"layer{i}"))

    def post_init_weights(self) -> None:
        """Zero the last BN of each residual branch (``zero_init_residual``) after init rules.

        The core calls this after the init rules and before any ``Pretrained``
        rule, so loaded weights are never zeroed.
        """
        if not self.zero_init_residual:
            return
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.constant_(m.last_norm.weight, 0.0)
                nn.init.constant_(m.last_norm.bias, 0.0)

    # ------------------------------------------------------------------ forward

    def _forward_stem(self, x: Tensor) -> Tensor:
        stem = self.stem(x) if self.deep_stem else self.relu(self.bn1(self.conv1(x)))
        return self.maxpool(stem)  # (B, stem, H/2, W/2) -> (B, stem, H/4, W/4)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Return the feature maps of ``out_indices``; ``x`` is (B, C_in, H, W)."""
        x = self._forward_stem(x)
        return self._forward_stages(x, self.res_layers)

    # ------------------------------------------------------------------ layer-wise LR decay

    def get_layer_depth(self, param_name: str, prefix: str = "") -> tuple[int, int]:
        """Return ``(layer_id, num_layers)`` of a parameter for layer-wise LR decay.

        The stem is layer 0, stage 1 is layer 1, stages 2 and 3 are split into
        groups of blocks (MMPretrain's grouping for ResNet-50/101/152: 2+2,
        2+8, 4+9 groups; one group per block for other depths), the last stage
        is the last backbone layer and anything outside the backbone (a
        parameter not starting with ``prefix``, e.g. the head) gets
        ``num_layers - 1``.

        Args:
            param_name: Parameter name, e.g. ``backbone.layer2.1.conv1.weight``.
            prefix: The backbone's prefix in ``param_name`` (``"backbone."`` for
                names from a whole model, ``""`` for the backbone's own names).

        Returns:
            The layer id and the total number of layers (head included).

        """
        depths = self.stage_blocks
        if len(depths) < 4:
            # Truncated networks: one layer per stage.
            max_layer_id = len(depths) + 1
            if not param_name.startswith(prefix):
                return max_layer_id, max_layer_id + 1
            stage = _stage_of(param_name[len(prefix):])
            return (stage if stage is not None else 0), max_layer_id + 1
        blk2, blk3 = _LAYER_DECAY_GROUPS.get((depths[1], depths[2]), (1, 1))
        n2 = math.ceil(depths[1] / blk2 - 1e-5)
        n3 = math.ceil(depths[2] / blk3 - 1e-5)
        n = 2 + n2 + n3  # r50: 2 + 2 + 2 = 6
        max_layer_id = n + 1  # the head is one more layer
        if not param_name.startswith(prefix):
            return max_layer_id, max_layer_id + 1
        name = param_name[len(prefix):]
        stage = _stage_of(name)
        if stage is None:
            return 0, max_layer_id + 1
        block_id = int(name.split(".")[1])
        if stage == 1:
            layer_id = 1
        elif stage == 2:
            layer_id = 2 + block_id // blk2
        elif stage == 3:
            layer_id = 2 + n2 + block_id // blk3
        else:
            layer_id = n
        return layer_id, max_layer_id + 1


#: (blocks in stage 2, blocks in stage 3) -> blocks per LR-decay group, from MMPretrain.
_LAYER_DECAY_GROUPS: dict[tuple[int, int], tuple[int, int]] = {
    (4, 6): (2, 3),
    (4, 23): (2, 3),
    (8, 36): (4, 4),
    (24, 36): (4, 4),
    (30, 48): (5, 6),
}


def _stage_of(name: str) -> int | None:
    """``layer3.0.conv1.weight`` -> 3; stem parameters -> None."""
    head = name.split(".", 1)[0]
    if head.startswith("layer") and head[5:].isdigit():
        return int(head[5:])
    return None


def _default_expansion(block: type[nn.Module]) -> int:
    return 4 if issubclass(block, Bottleneck) else 1


class ResNetV1c(ResNet):
    """ResNetV1c backbone: ResNet with a deep stem of three 3×3 convs instead of the 7×7 conv.

    From "Bag of Tricks for Image Classification" (arXiv:1812.01187).
    """

    fixed_fields: ClassVar[dict[str, Any]] = {"deep_stem": True, "avg_down": False}

    def __init__(self, *, deep_stem: bool = True, avg_down: bool = False, **kwargs: Any) -> None:
        super().__init__(deep_stem=deep_stem, avg_down=avg_down, **kwargs)


class ResNetV1d(ResNet):
    """ResNetV1d backbone: deep 3×3 stem plus AvgPool-then-1×1-conv shortcut downsampling.

    From "Bag of Tricks for Image Classification" (arXiv:1812.01187).
    """

    fixed_fields: ClassVar[dict[str, Any]] = {"deep_stem": True, "avg_down": True}

    def __init__(self, *, deep_stem: bool = True, avg_down: bool = True, **kwargs: Any) -> None:
        super().__init__(deep_stem=deep_stem, avg_down=avg_down, **kwargs)


inherit_args_doc(
    ResNetV1c, ResNet,
    {"deep_stem": "Always true for ResNetV1c.", "avg_down": "Always false for ResNetV1c."},
)
inherit_args_doc(
    ResNetV1d, ResNet,
    {"deep_stem": "Always true for ResNetV1d.", "avg_down": "Always true for ResNetV1d."},
)
