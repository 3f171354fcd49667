"""Swin Transformer backbone, and its SimMIM pretraining variant with a mask token.

Provenance: Liu et al., 2021, "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows" (arXiv:2103.14030) and Xie et al., 2022, "SimMIM: a Simple Framework
for Masked Image Modeling" (arXiv:2111.09886). Arguments, presets, state-dict keys,
``frozen_stages`` and ``get_layer_depth`` follow MMPretrain's ``SwinTransformer``
(``mmpretrain/models/backbones/swin_transformer.py``, blocks from MMCV:
``PatchEmbed``/``PatchMerging`` with corner padding) and ``SimMIMSwinTransformer``
(``mmpretrain/models/selfsup/simmim.py``), so MMPretrain checkpoints load unchanged;
``pretrain convert-weights --from torchvision --arch swin_t`` maps torchvision's.
Differences (``docs/differences.md``): small maps are padded to the window as
torchvision does; the relative-position table of a checkpoint with another window is
resized in torch (no SciPy) and its index buffer rebuilt; ``window_size`` is a field of
its own (``stage_cfgs = {block_cfgs = {window_size = N}}`` is accepted for ported configs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseBackbone
from pretrain_builtins.layers import (
    FFN,
    PatchEmbed,
    index_issues,
    inherit_args_doc,
    maybe_checkpoint,
    pair,
    replace_masked,
    resize_pos_embed,
    set_norm_eval,
)
from pretrain_builtins.layers.relative_position import resize_relative_position_bias_table, table_side
from pretrain_builtins.layers.window_attention import ShiftWindowMSA

__all__ = ["ARCH_ZOO", "PatchMerging", "SimMIMSwinTransformer", "SwinBlock", "SwinBlockSequence", "SwinTransformer"]

#: Keys of a custom ``arch`` table.
ARCH_KEYS = ("embed_dims", "depths", "num_heads")

# ----------------------------------------------------------------------------- blocks


class SwinPatchEmbed(PatchEmbed):
    """Patch embedding followed by a LayerNorm (MMCV ``PatchEmbed(norm_cfg=LN)``)."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int, img_size: tuple[int, int]) -> None:
        super().__init__(in_channels, embed_dims, patch_size, img_size)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, C, H, W) -> tokens (B, H'·W', C) and the grid (H', W'); corner padding."""
        tokens, grid = super().forward(x)
        return self.norm(tokens), grid


class PatchMerging(nn.Module):
    """Merge each 2x2 neighbourhood into one token: LayerNorm(4C) then Linear(4C -> 2C).

    The 4C features are ordered like MMCV's ``nn.Unfold`` (channel-major, then the 2x2
    positions row by row); odd maps are zero-padded at the bottom/right first.

    Args:
        in_channels: Channels of the incoming tokens.
        out_channels: Channels of the merged tokens.

    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm = nn.LayerNorm(4 * in_channels)
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """(B, H·W, C) -> (B, ⌈H/2⌉·⌈W/2⌉, C_out) and the new (H, W)."""
        b, _, c = x.shape
        h, w = hw_shape
        x = x.view(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)
        x = nn.functional.pad(x, (0, w % 2, 0, h % 2))
        h2, w2 = x.shape[-2] // 2, x.shape[-1] // 2
        x = x.reshape(b, c, h2, 2, w2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h2 * w2, 4 * c)
        return self.reduction(self.norm(x)), (h2, w2)


class SwinBlock(nn.Module):
    """``x + attn(norm1(x))`` with (shifted) windows, then ``x + ffn(norm2(x))``.

    Args:
        embed_dims: Token width.
        num_heads: Attention heads.
        window_size: Window side.
        shift: Shift the windows by half a window.
        ffn_ratio: MLP hidden width as a multiple of ``embed_dims``.
        drop_path: Stochastic depth of both branches.
        pad_small_map: Keep the shift on maps no larger than a window.
        with_cp: Activation checkpointing while training.

    """

    def __init__(
        self, embed_dims: int, num_heads: int, window_size: int = 7, shift: bool = False, ffn_ratio: float = 4.0,
        drop_path: float = 0.0, pad_small_map: bool = False, with_cp: bool = False,
    ) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window_size, window_size // 2 if shift else 0,
                                   drop_path=drop_path, pad_small_map=pad_small_map)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, int(embed_dims * ffn_ratio), drop_path=drop_path)

    def _inner(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        x = x + self.attn(self.norm1(x), hw_shape)
        return self.ffn(self.norm2(x), identity=x)  # type: ignore[no-any-return]

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        """(B, H·W, C) -> (B, H·W, C)."""
        return maybe_checkpoint(partial(self._inner, hw_shape=hw_shape), x, self.with_cp and self.training)


class SwinBlockSequence(nn.Module):
    """One stage: ``depth`` blocks alternating plain and shifted windows, then patch merging.

    Args:
        embed_dims: Token width of the stage.
        depth: Number of blocks.
        num_heads: Attention heads.
        window_size: Window side.
        downsample: End with a :class:`PatchMerging` to twice the width.
        drop_paths: Stochastic depth of each block.
        with_cp: Activation checkpointing while training.
        pad_small_map: Keep the shift on maps no larger than a window.

    """

    def __init__(
        self, embed_dims: int, depth: int, num_heads: int, window_size: int = 7, downsample: bool = False,
        drop_paths: Sequence[float] = (), with_cp: bool = False, pad_small_map: bool = False,
    ) -> None:
        super().__init__()
        drops = list(drop_paths) or [0.0] * depth
        self.embed_dims = embed_dims
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dims, num_heads, window_size, shift=i % 2 == 1, drop_path=drops[i],
                      pad_small_map=pad_small_map, with_cp=with_cp)
            for i in range(depth)
        )
        self.downsample = PatchMerging(embed_dims, 2 * embed_dims) if downsample else None

    @property
    def out_channels(self) -> int:
        """Width after the stage (doubled by the patch merging, if any)."""
        return self.downsample.out_channels if self.downsample is not None else self.embed_dims

    def forward(
        self, x: Tensor, in_shape: tuple[int, int], do_downsample: bool = True
    ) -> tuple[Tensor, tuple[int, int]]:
        """Run the blocks (and the merging when ``do_downsample``); return tokens and their grid."""
        for block in self.blocks:
            x = block(x, in_shape)
        if self.downsample is not None and do_downsample:
            return self.downsample(x, in_shape)
        return x, in_shape


# ----------------------------------------------------------------------------- backbone


class SwinTransformer(BaseBackbone):
    """Swin Transformer: patch embedding, four stages of (shifted) window attention, patch merging.

    Returns one (B, C_i, H_i, W_i) map per ``out_indices`` entry, each through its own
    LayerNorm ``norm{i}``. Any input size works: inputs, windows and merges are padded
    at the bottom/right as needed (an absolute position embedding is interpolated).

    Args:
        arch: ``tiny``/``t``, ``small``/``s``, ``base``/``b``, ``large``/``l``, or a table
            with ``embed_dims`` and per-stage lists ``depths`` and ``num_heads``.
        img_size: Input size the model is built for (an absolute position embedding's grid).
        patch_size: Patch size of the patch embedding.
        in_channels: Image channels.
        window_size: Side of the attention windows.
        drop_rate: Dropout after the patch embedding.
        drop_path_rate: Stochastic depth, rising linearly to this value over all blocks.
        out_indices: Stages whose output is returned, in 0..3.
        out_after_downsample: Return a stage's output after its patch merging.
        use_abs_pos_embed: Add a learned absolute position embedding to the patches.
        interpolate_mode: How the absolute position embedding is resized.
        with_cp: Activation checkpointing of every block while training.
        frozen_stages: Freeze the patch embedding and stages 0..N (-1: nothing).
        norm_eval: Keep normalisation statistics frozen (BatchNorm only; Swin has none).
        pad_small_map: Keep shifting windows on maps no larger than one window (detection).
        stage_cfgs: MMPretrain's per-stage overrides; only ``{block_cfgs = {window_size = N}}``
            (SimMIM's configs) is supported, and equals ``window_size = N``.

    """

    component_kind: ClassVar[str] = "backbone"
    #: The original Swin initialisation (MMPretrain's configs set the same rules).
    default_init: ClassVar[list[dict[str, Any]]] = [
        {"type": "TruncNormal", "layer": "Linear", "std": 0.02, "bias": 0.0},
        {"type": "Constant", "layer": "LayerNorm", "val": 1.0, "bias": 0.0},
    ]
    example_config: ClassVar[dict[str, Any]] = {
        "arch": {"embed_dims": 8, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4]},
        "img_size": 32, "patch_size": 2, "window_size": 2, "out_indices": [2, 3],
    }
    num_extra_tokens: ClassVar[int] = 0

    def __init__(
        self,
        *,
        arch: str | dict[str, Any] = "tiny",
        img_size: Annotated[int, Field(gt=0)] | tuple[int, int] = 224,
        patch_size: Annotated[int, Field(gt=0)] = 4,
        in_channels: Annotated[int, Field(gt=0)] = 3,
        window_size: Annotated[int, Field(gt=0)] = 7,
        drop_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1,
        out_indices: Sequence[int] = (3,),
        out_after_downsample: bool = False,
        use_abs_pos_embed: bool = False,
        interpolate_mode: Literal["bicubic", "bilinear", "nearest"] = "bicubic",
        with_cp: bool = False,
        frozen_stages: Annotated[int, Field(ge=-1)] = -1,
        norm_eval: bool = False,
        pad_small_map: bool = False,
        stage_cfgs: dict[str, dict[str, int]] | None = None,
    ) -> None:
        super().__init__()
        problems = list(self._check(arch, out_indices, frozen_stages, stage_cfgs))
        if problems:
            raise ValueError("; ".join(f"{name}: {msg}" for name, msg in problems))
        if stage_cfgs:
            window_size = int(stage_cfgs["block_cfgs"]["window_size"])
        settings = self.arch_settings(arch)
        self.arch = arch if isinstance(arch, str) else dict(arch)
        self.embed_dims: int = settings["embed_dims"]
        self.depths: list[int] = list(settings["depths"])
        self.num_heads: list[int] = list(settings["num_heads"])
        self.num_layers = len(self.depths)
        self.in_channels, self.patch_size, self.window_size = in_channels, patch_size, window_size
        self.out_indices = tuple(out_indices)
        self.out_after_downsample = out_after_downsample
        self.use_abs_pos_embed = use_abs_pos_embed
        self.interpolate_mode: str = interpolate_mode
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        self.img_size = pair(img_size)

        self.patch_embed = SwinPatchEmbed(in_channels, self.embed_dims, patch_size, self.img_size)
        self.patch_resolution = self.patch_embed.init_out_size
        if use_abs_pos_embed:
            grid = self.patch_resolution
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], self.embed_dims))
        self.register_load_state_dict_pre_hook(self._prepare_checkpoint)
        self.drop_after_pos = nn.Dropout(p=drop_rate)

        total = sum(self.depths)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.stages = nn.ModuleList()
        widths = [self.embed_dims]
        for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads, strict=True)):
            stage = SwinBlockSequence(
                widths[-1], depth, heads, window_size, downsample=i < self.num_layers - 1,
                drop_paths=dpr[:depth], with_cp=with_cp, pad_small_map=pad_small_map,
            )
            dpr = dpr[depth:]
            self.stages.append(stage)
            widths.append(stage.out_channels)
        self.num_features = widths[1:] if out_after_downsample else widths[:-1]
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self._freeze_stages()

    # ------------------------------------------------------------------ spec checks

    @staticmethod
    def arch_settings(arch: str | Mapping[str, Any]) -> dict[str, Any]:
        """Resolve ``arch`` (preset name, case-insensitive, or table) to its settings."""
        if isinstance(arch, str):
            return dict(ARCH_ZOO[_ALIASES[arch.lower()]])
        return {"embed_dims": int(arch["embed_dims"]), "depths": [int(d) for d in arch["depths"]],
                "num_heads": [int(h) for h in arch["num_heads"]]}

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """Arch table, ``out_indices`` in 0..stages-1, ``frozen_stages``, ``stage_cfgs`` form."""
        return cls._check(params.get("arch", "tiny"), params.get("out_indices", (3,)),
                          params.get("frozen_stages", -1), params.get("stage_cfgs"))

    @classmethod
    def _check(cls, arch: Any, out_indices: Any, frozen_stages: int, stage_cfgs: Any) -> Iterable[tuple[str, str]]:
        if isinstance(arch, str):
            if arch.lower() not in _ALIASES:
                yield "arch", f"unknown Swin arch {arch!r}; choose one of {', '.join(sorted(_ALIASES))} or a table"
                return
        else:
            if set(arch) != set(ARCH_KEYS):
                yield "arch", f"a custom arch table needs exactly {', '.join(ARCH_KEYS)}, got {sorted(arch)}"
                return
            depths, heads = list(arch["depths"]), list(arch["num_heads"])
            if not depths or len(depths) != len(heads) or min(depths + heads) <= 0:
                yield "arch", "depths and num_heads must be equally long lists of positive integers"
                return
            width = int(arch["embed_dims"])
            bad = [h for i, h in enumerate(heads) if (width * 2**i) % h]
            if width <= 0 or bad:
                yield "arch", f"stage i is embed_dims·2^i = {width}·2^i wide; num_heads {heads} must divide it"
                return
        stages = len(cls.arch_settings(arch)["depths"])
        yield from index_issues("out_indices", list(out_indices), stages)
        if frozen_stages >= stages:
            yield "frozen_stages", f"is {frozen_stages}, but the arch has stages 0..{stages - 1}"
        if (stage_cfgs and set(stage_cfgs) != {"block_cfgs"}) or (
            stage_cfgs and set(stage_cfgs["block_cfgs"]) != {"window_size"}
        ):
            yield "stage_cfgs", (
                "only {block_cfgs = {window_size = N}} is supported (MMPretrain's SimMIM configs); "
                "prefer the window_size field"
            )

    # ------------------------------------------------------------------ weights

    def post_init_weights(self) -> None:
        """MMPretrain's init after the rules: truncated-normal bias tables and position embedding."""
        for module in self.modules():
            table = getattr(module, "relative_position_bias_table", None)
            if isinstance(table, nn.Parameter):
                nn.init.trunc_normal_(table, std=0.02)
        if self.use_abs_pos_embed:
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)

    def _prepare_checkpoint(
        self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """Load-time hook: resize bias tables (and abs. position embedding) to this model's sizes."""
        own = dict(self.named_parameters()) | dict(self.named_buffers())
        for key, current in own.items():
            name = prefix + key
            if not key.endswith("relative_position_bias_table") or name not in state_dict:
                continue
            table = state_dict[name]
            if table.shape != current.shape and table.dim() == 2 and table.shape[1] == current.shape[1]:
                src, dst = table_side(table.shape[0]), table_side(current.shape[0])
                state_dict[name] = resize_relative_position_bias_table(table, (src, src), (dst, dst))
                # The index depends only on the window: this model's own is the right one.
                index = key.replace("bias_table", "index")
                state_dict[prefix + index] = own[index].detach().clone()
        name = prefix + "absolute_pos_embed"
        if self.use_abs_pos_embed and name in state_dict:
            ckpt = state_dict[name]
            if ckpt.shape != self.absolute_pos_embed.shape and ckpt.dim() == 3:
                side = math.isqrt(ckpt.shape[1])
                state_dict[name] = resize_pos_embed(ckpt, (side, side), self.patch_resolution,
                                                    self.interpolate_mode, 0)

    # ------------------------------------------------------------------ freezing / LR decay

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        mods: list[nn.Module] = [self.patch_embed, *self.stages[: self.frozen_stages + 1]]
        mods += [getattr(self, f"norm{i}") for i in self.out_indices if i <= self.frozen_stages]
        return mods

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)
        if self.frozen_stages >= 0 and self.use_abs_pos_embed:
            self.absolute_pos_embed.requires_grad_(False)

    def train(self, mode: bool = True) -> SwinTransformer:
        """Switch mode, keeping frozen stages (and norms with ``norm_eval``) in eval mode."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                set_norm_eval(self)
        return self

    def get_layer_depth(self, param_name: str, prefix: str = "") -> tuple[int, int]:
        """Layer id for layer-wise LR decay (MMPretrain's rule): one id per block.

        Returns:
            ``(layer_id, sum(depths) + 2)``: patch embedding 0, block ``j`` of stage ``i``
            ``sum(depths[:i]) + j + 1``, a stage's patch merging its last block's id,
            everything else (norms, head) the last id.

        """
        total = sum(self.depths) + 2
        if not param_name.startswith(prefix):
            return total - 1, total
        name = param_name[len(prefix):]
        if name.startswith(("patch_embed", "absolute_pos_embed", "mask_token")):
            return 0, total
        if name.startswith("stages."):
            parts = name.split(".")
            stage = int(parts[1])
            if parts[2] == "downsample":
                return sum(self.depths[: stage + 1]), total
            return sum(self.depths[:stage]) + int(parts[3]) + 1, total
        return total - 1, total

    # ------------------------------------------------------------------ forward

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch tokens (B, L, C) and their grid (before the position embedding)."""
        return self.patch_embed(x)  # type: ignore[no-any-return]

    def run_stages(self, x: Tensor, hw_shape: tuple[int, int]) -> tuple[Tensor, ...]:
        """Position embedding, dropout and the stages; the normed maps of ``out_indices``."""
        if self.use_abs_pos_embed:
            x = x + resize_pos_embed(self.absolute_pos_embed, self.patch_resolution, hw_shape,
                                     self.interpolate_mode, 0)
        x = self.drop_after_pos(x)
        found: dict[int, Tensor] = {}
        for i, stage in enumerate(self.stages):
            x, hw_shape = stage(x, hw_shape, do_downsample=self.out_after_downsample)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(x)  # (B, H·W, C_i)
                found[i] = out.view(-1, *hw_shape, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
            if stage.downsample is not None and not self.out_after_downsample:
                x, hw_shape = stage.downsample(x, hw_shape)
        return tuple(found[i] for i in self.out_indices)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """(B, C_in, H, W) -> one (B, C_i, H_i, W_i) map per ``out_indices`` entry."""
        return self.run_stages(*self.embed(x))


class SimMIMSwinTransformer(SwinTransformer):
    """Swin Transformer for SimMIM: masked patches are replaced by a learned mask token.

    ``forward(x, mask)`` with ``mask`` bool (B, H/p, W/p) (True = masked, the patch
    grid) replaces those patch embeddings by ``mask_token`` before the stages;
    ``forward(x)`` (``mask = None``) is the plain Swin forward.

    """

    #: SimMIM's init (MMPretrain's ``_init_weights``): the Swin rules plus the mask token.
    example_config: ClassVar[dict[str, Any]] = SwinTransformer.example_config

    def __init__(
        self,
        *,
        arch: str | dict[str, Any] = "tiny",
        img_size: Annotated[int, Field(gt=0)] | tuple[int, int] = 224,
        patch_size: Annotated[int, Field(gt=0)] = 4,
        in_channels: Annotated[int, Field(gt=0)] = 3,
        window_size: Annotated[int, Field(gt=0)] = 7,
        drop_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1,
        out_indices: Sequence[int] = (3,),
        use_abs_pos_embed: bool = False,
        with_cp: bool = False,
        frozen_stages: Annotated[int, Field(ge=-1)] = -1,
        norm_eval: bool = False,
        pad_small_map: bool = False,
        stage_cfgs: dict[str, dict[str, int]] | None = None,
    ) -> None:
        super().__init__(
            arch=arch, img_size=img_size, patch_size=patch_size, in_channels=in_channels, window_size=window_size,
            drop_rate=drop_rate, drop_path_rate=drop_path_rate, out_indices=out_indices,
            use_abs_pos_embed=use_abs_pos_embed, with_cp=with_cp, frozen_stages=frozen_stages,
            norm_eval=norm_eval, pad_small_map=pad_small_map, stage_cfgs=stage_cfgs,
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims))

    def example_inputs(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """Conformance-kit input: images and a random half-masked patch grid (so the mask token trains)."""
        h, w = self.img_size
        grid = (math.ceil(h / self.patch_size), math.ceil(w / self.patch_size))
        mask = torch.rand(batch_size, *grid) < 0.5
        return torch.randn(batch_size, self.in_channels, h, w), mask

    def post_init_weights(self) -> None:
        """Swin's init plus a truncated-normal mask token."""
        super().post_init_weights()
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, ...]:  # type: ignore[override]
        """Stage maps of the images with masked patches replaced (plain Swin when ``mask`` is None)."""
        tokens, grid = self.embed(x)  # (B, L, C)
        if mask is not None:
            tokens = replace_masked(tokens, mask, self.mask_token)
        return self.run_stages(tokens, grid)


inherit_args_doc(SimMIMSwinTransformer, SwinTransformer, {})

# ----------------------------------------------------------------------------- presets

#: MMPretrain's ``arch_zoo``.
ARCH_ZOO: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dims": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24]},
    "small": {"embed_dims": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24]},
    "base": {"embed_dims": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32]},
    "large": {"embed_dims": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48]},
}
_ALIASES = {**{name: name for name in ARCH_ZOO}, "t": "tiny", "s": "small", "b": "base", "l": "large"}
