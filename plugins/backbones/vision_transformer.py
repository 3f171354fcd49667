"""Vision Transformer backbone (ViT, DeiT).

Provenance: Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words" (arXiv:2010.11929)
and Touvron et al., 2021, "Training data-efficient image transformers" (DeiT,
arXiv:2012.12877). Semantics, argument names, presets and state-dict keys follow
MMPretrain's ``mmpretrain/models/backbones/vision_transformer.py`` (blocks in
``_transformer.py``), so MMPretrain checkpoints load unchanged. Differences (see
``docs/differences.md``): ``out_indices`` is never mutated and an index equal to
``num_layers`` is a validation error instead of an empty output; outputs follow the
order of ``out_indices``; ``frozen_stages`` also keeps the frozen part in eval mode
after ``model.train()``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseBackbone
from pretrain.errors import PretrainError
from pretrain_builtins.layers import (
    FFN,
    LN_EPS,
    LayerScale,
    MultiheadAttention,
    PatchEmbed,
    TransformerEncoderLayer,
    is_square,
    maybe_checkpoint,
    pair,
    resize_pos_embed,
)

__all__ = [
    "ARCH_ZOO",
    "FFN",
    "LN_EPS",
    "LayerScale",
    "MultiheadAttention",
    "PatchEmbed",
    "TransformerEncoderLayer",
    "VisionTransformer",
    "resize_pos_embed",
]

OutType = Literal["cls_token", "featmap", "avg_featmap", "raw"]
InterpolateMode = Literal["bicubic", "bilinear", "nearest"]

#: Keys a custom ``arch`` table must have (all positive integers).
ARCH_KEYS = ("embed_dims", "num_layers", "num_heads", "feedforward_channels")
#: Most encoder layers a custom arch may have: the deepest published ViTs have under
#: 100, and the shape check of a deeper one would take minutes (``num_layers = 1e6``).
MAX_LAYERS = 256

# ----------------------------------------------------------------------------- backbone


class VisionTransformer(BaseBackbone):
    """Vision Transformer (ViT/DeiT): patch embedding, cls token, Transformer encoder.

    Returns one feature per ``out_indices`` entry, shaped by ``out_type``:
    ``cls_token`` (B, C); ``featmap`` (B, C, H/p, W/p) from the patch tokens;
    ``avg_featmap`` (B, C), the mean patch token through an extra LayerNorm
    ``ln2``; ``raw`` (B, L, C) including the cls token. Other input sizes work:
    the position embedding is interpolated at forward time, and a checkpoint with
    a position embedding of another size is resized while it is loaded.

    Args:
        arch: A preset name (``deit-tiny``/``deit-t``, ``deit-small``/``deit-s``,
            ``deit-base``/``deit-b``, ``small``/``s``, ``base``/``b``, ``large``/``l``,
            ``huge``/``h``) or a table with integer ``embed_dims``, ``num_layers``,
            ``num_heads`` and ``feedforward_channels``.
        img_size: Input size the position embedding is built for (int or [H, W]).
        patch_size: Square patch size in pixels.
        in_channels: Image channels.
        out_indices: Encoder layer(s) to output; negative values count from the end
            (-1 is the last layer).
        drop_rate: Dropout after the position embedding, the projections and in the MLPs.
        drop_path_rate: Stochastic depth, rising linearly from 0 to this value over the layers.
        qkv_bias: Whether the attention ``qkv`` projection has a bias.
        final_norm: Apply a LayerNorm (``ln1``) after the last layer.
        out_type: ``cls_token``, ``featmap``, ``avg_featmap`` or ``raw`` (see above).
        with_cls_token: Prepend a learnable cls token (required by ``out_type = "cls_token"``).
        frozen_stages: Freeze the patch embedding, tokens and the first this-many layers
            (-1: nothing; ``num_layers`` also freezes the final norms, e.g. for a linear probe).
        interpolate_mode: How the position embedding is resized for other grids.
        layer_scale_init_value: LayerScale init value; 0 disables LayerScale.
        pre_norm: Add a LayerNorm before the encoder (CLIP style; the patch projection
            then has no bias).
        with_cp: Activation checkpointing of every layer while training (saves memory).

    """

    component_kind: ClassVar[str] = "backbone"
    #: MMPretrain's ViT has ``init_cfg=None``: only the work in :meth:`post_init_weights`.
    default_init: ClassVar[list[dict[str, Any]]] = []
    OUT_TYPES: ClassVar[tuple[str, ...]] = ("raw", "cls_token", "featmap", "avg_featmap")
    #: Learnable tokens after the cls token (DeiT's distillation token: 1).
    num_additional_tokens: ClassVar[int] = 0
    #: Whether ``pos_embed`` has slots for the cls/extra tokens (false: DeiT III, which
    #: adds the position embedding to the patches before prepending the cls token).
    pos_embed_covers_extra_tokens: ClassVar[bool] = True
    #: A small instance for the conformance kit (``pretrain.testing``).
    example_config: ClassVar[dict[str, Any]] = {
        "arch": {"embed_dims": 16, "num_layers": 2, "num_heads": 2, "feedforward_channels": 32},
        "img_size": 32,
        "patch_size": 8,
    }

    def __init__(
        self,
        *,
        arch: str | dict[str, int] = "base",
        img_size: Annotated[int, Field(gt=0)] | tuple[int, int] = 224,
        patch_size: Annotated[int, Field(gt=0)] = 16,
        in_channels: Annotated[int, Field(gt=0)] = 3,
        out_indices: int | Sequence[int] = -1,
        drop_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        qkv_bias: bool = True,
        final_norm: bool = True,
        out_type: OutType = "cls_token",
        with_cls_token: bool = True,
        frozen_stages: Annotated[int, Field(ge=-1)] = -1,
        interpolate_mode: InterpolateMode = "bicubic",
        layer_scale_init_value: Annotated[float, Field(ge=0.0)] = 0.0,
        pre_norm: bool = False,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        problems = list(
            self._check(
                arch=arch,
                img_size=img_size,
                out_indices=out_indices,
                out_type=out_type,
                with_cls_token=with_cls_token,
                frozen_stages=frozen_stages,
            )
        )
        if problems:
            raise ValueError("; ".join(f"{name}: {msg}" for name, msg in problems))
        settings = self.arch_settings(arch)
        self.arch = arch if isinstance(arch, str) else dict(arch)
        self.embed_dims = settings["embed_dims"]
        self.num_layers = settings["num_layers"]
        self.img_size = pair(img_size)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_type: str = out_type
        self.with_cls_token = with_cls_token
        self.final_norm = final_norm
        self.frozen_stages = frozen_stages
        self.interpolate_mode: str = interpolate_mode
        self.with_cp = with_cp

        self.patch_embed = PatchEmbed(
            in_channels, self.embed_dims, patch_size, self.img_size, bias=not pre_norm
        )
        self.patch_resolution = self.patch_embed.init_out_size
        num_patches = self.patch_resolution[0] * self.patch_resolution[1]

        # cls token: present unless disabled; `cls_token` out_type without it was rejected above.
        self.num_extra_tokens = (1 if with_cls_token else 0) + self.num_additional_tokens
        self.cls_token: nn.Parameter | None = (
            nn.Parameter(torch.zeros(1, 1, self.embed_dims)) if with_cls_token else None
        )
        #: Leading tokens of ``pos_embed`` that are not patch positions.
        self.num_pos_extra_tokens = self.num_extra_tokens if self.pos_embed_covers_extra_tokens else 0
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + self.num_pos_extra_tokens, self.embed_dims)
        )
        self.register_load_state_dict_pre_hook(self._prepare_pos_embed)
        self.drop_after_pos = nn.Dropout(p=drop_rate)

        # Copy into a fresh tuple: the caller's list is never rewritten (MMPretrain mutates it).
        self.out_indices = tuple(self._normalise_indices(out_indices, self.num_layers))

        # Stochastic depth rising linearly over the layers (plain floats: works under meta).
        n = self.num_layers
        dpr = [drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.layers = nn.ModuleList(
            self.build_layer(settings, drop_rate=drop_rate, drop_path_rate=dpr[i], qkv_bias=qkv_bias,
                             layer_scale_init_value=layer_scale_init_value)
            for i in range(self.num_layers)
        )
        self.pre_norm: nn.Module = (
            nn.LayerNorm(self.embed_dims, eps=LN_EPS) if pre_norm else nn.Identity()
        )
        if final_norm:
            self.ln1 = nn.LayerNorm(self.embed_dims, eps=LN_EPS)
        if out_type == "avg_featmap":
            self.ln2 = nn.LayerNorm(self.embed_dims, eps=LN_EPS)
        if frozen_stages > 0:
            self._freeze_stages()

    def build_layer(
        self, settings: Mapping[str, int], *, drop_rate: float, drop_path_rate: float, qkv_bias: bool,
        layer_scale_init_value: float,
    ) -> nn.Module:
        """One encoder layer (a hook: variants such as BEiT build their own blocks)."""
        return TransformerEncoderLayer(
            embed_dims=self.embed_dims,
            num_heads=settings["num_heads"],
            feedforward_channels=settings["feedforward_channels"],
            layer_scale_init_value=layer_scale_init_value,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            qkv_bias=qkv_bias,
        )

    # ------------------------------------------------------------------ spec checks

    @staticmethod
    def arch_settings(arch: str | Mapping[str, int]) -> dict[str, int]:
        """Resolve ``arch`` (preset name, case-insensitive, or custom table) to its four sizes."""
        if isinstance(arch, str):
            return dict(ARCH_ZOO[_ARCH_ALIASES[arch.lower()]])
        return {key: int(arch[key]) for key in ARCH_KEYS}

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """Cross-field checks: arch table, out_indices range, cls token, frozen_stages."""
        return cls._check(
            arch=params.get("arch", "base"),
            img_size=params.get("img_size", 224),
            out_indices=params.get("out_indices", -1),
            out_type=params.get("out_type", "cls_token"),
            with_cls_token=params.get("with_cls_token", True),
            frozen_stages=params.get("frozen_stages", -1),
        )

    @classmethod
    def _check(
        cls,
        *,
        arch: Any,
        img_size: Any,
        out_indices: Any,
        out_type: Any,
        with_cls_token: Any,
        frozen_stages: Any,
    ) -> Iterable[tuple[str, str]]:
        if isinstance(arch, str):
            if arch.lower() not in _ARCH_ALIASES:
                yield "arch", (
                    f"unknown ViT arch {arch!r}; choose one of {', '.join(sorted(_ARCH_ALIASES))} "
                    f"or give a table with {', '.join(ARCH_KEYS)}"
                )
                return
        elif isinstance(arch, Mapping):
            missing = [k for k in ARCH_KEYS if k not in arch]
            extra = sorted(set(arch) - set(ARCH_KEYS))
            if missing or extra:
                parts = []
                if missing:
                    parts.append(f"missing {', '.join(missing)}")
                if extra:
                    parts.append(f"unknown {', '.join(extra)}")
                yield "arch", (
                    f"a custom arch table needs exactly {', '.join(ARCH_KEYS)} ({'; '.join(parts)})"
                )
                return
            bad = [k for k in ARCH_KEYS if not isinstance(arch[k], int) or arch[k] <= 0]
            if bad:
                yield "arch", f"{', '.join(bad)} must be positive integers"
                return
            if arch["num_layers"] > MAX_LAYERS:
                yield "arch", (
                    f"num_layers = {arch['num_layers']} is above {MAX_LAYERS}, the most a ViT may have "
                    "here (published ViTs have fewer than 100 layers)"
                )
                return
            if arch["embed_dims"] % arch["num_heads"]:
                yield "arch", (
                    f"embed_dims ({arch['embed_dims']}) must be divisible by num_heads "
                    f"({arch['num_heads']})"
                )
                return
        else:
            yield "arch", f"expected a preset name or a table, got {type(arch).__name__}"
            return
        if not isinstance(img_size, int) and (
            len(img_size) != 2 or any(int(s) <= 0 for s in img_size)
        ):
            yield "img_size", "must be a positive int or [height, width]"
        num_layers = cls.arch_settings(arch)["num_layers"]
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        if not indices:
            yield "out_indices", "must name at least one layer"
        bad_idx = [i for i in indices if not -num_layers <= i < num_layers]
        if bad_idx:
            yield "out_indices", (
                f"{bad_idx} out of range for {num_layers} layers; use 0..{num_layers - 1} "
                f"or -{num_layers}..-1"
            )
        elif len({i % num_layers for i in indices}) != len(indices):
            yield "out_indices", f"{indices} names the same layer twice"
        if out_type == "cls_token" and not with_cls_token:
            yield "with_cls_token", (
                'out_type = "cls_token" needs the cls token; set with_cls_token = true or pick '
                'out_type "avg_featmap", "featmap" or "raw"'
            )
        if frozen_stages > num_layers:
            yield "frozen_stages", f"is {frozen_stages}, but the arch has only {num_layers} layers"

    @staticmethod
    def _normalise_indices(out_indices: int | Sequence[int], num_layers: int) -> list[int]:
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        return [i + num_layers if i < 0 else i for i in indices]

    # ------------------------------------------------------------------ weights

    def post_init_weights(self) -> None:
        """MMPretrain's init: Xavier MLPs in every layer, truncated-normal position embedding."""
        for layer in self.layers:
            assert isinstance(layer, TransformerEncoderLayer)
            layer.init_ffn()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def _prepare_pos_embed(
        self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """Load-time hook: resize a checkpoint's ``pos_embed`` to this model's grid."""
        name = prefix + "pos_embed"
        if name not in state_dict or self.pos_embed is None:
            return
        ckpt = state_dict[name]
        own_len = self.pos_embed.shape[1]
        # A checkpoint with a cls slot loaded into a model without one: drop the slot
        # (recognised by one token too many, or by a square grid after the first token).
        if not self.with_cls_token and ckpt.dim() == 3 and ckpt.shape[1] != own_len:
            n = ckpt.shape[1]
            if n == own_len + 1 or (not is_square(n) and is_square(n - 1)):
                ckpt = ckpt[:, 1:]
        if ckpt.dim() == 3 and ckpt.shape[1] != own_len and ckpt.shape[2] == self.pos_embed.shape[2]:
            extra = self.num_pos_extra_tokens
            side = math.isqrt(ckpt.shape[1] - extra)
            if side * side != ckpt.shape[1] - extra:
                raise PretrainError(
                    f"cannot resize the checkpoint's {prefix}pos_embed {tuple(ckpt.shape)} to "
                    f"{tuple(self.pos_embed.shape)}: its {ckpt.shape[1] - extra} "
                    "patch positions are not a square grid",
                    hint="Build the model with the checkpoint's img_size, or resize the "
                    "embedding yourself before loading.",
                )
            ckpt = resize_pos_embed(
                ckpt, (side, side), self.patch_resolution, self.interpolate_mode, extra
            )
        state_dict[name] = ckpt

    # ------------------------------------------------------------------ freezing / LR decay

    def _frozen_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = [self.drop_after_pos, self.patch_embed, self.pre_norm]
        mods += list(self.layers[: max(self.frozen_stages, 0)])
        if self.frozen_stages == self.num_layers:
            if self.final_norm:
                mods.append(self.ln1)
            if self.out_type == "avg_featmap":
                mods.append(self.ln2)
        return mods

    def _freeze_stages(self) -> None:
        if self.pos_embed is not None:  # BEiT may have no absolute position embedding
            self.pos_embed.requires_grad_(False)
        for token in self.extra_tokens():
            token.requires_grad_(False)
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> VisionTransformer:
        """Switch mode, keeping frozen stages in eval mode (no dropout / drop-path there)."""
        super().train(mode)
        if mode and self.frozen_stages > 0:
            for module in self._frozen_modules():
                module.eval()
        return self

    def get_layer_depth(self, param_name: str, prefix: str = "") -> tuple[int, int]:
        """Layer id of a parameter for layer-wise LR decay (MMPretrain's rule).

        Tokens and patch embedding are layer 0, encoder layer ``i`` is ``i + 1``,
        everything else (final norms) is the last id.

        Args:
            param_name: The parameter's name (as in ``named_parameters``).
            prefix: Prefix of the backbone's parameters in that name (e.g. ``"backbone."``).

        Returns:
            ``(layer_id, num_layer_ids)`` with ``num_layer_ids = num_layers + 2``.

        """
        total = self.num_layers + 2
        if not param_name.startswith(prefix):
            return total - 1, total
        name = param_name[len(prefix):]
        if name.endswith("_token") or name == "pos_embed" or name.startswith(("patch_embed", "pre_norm")):
            depth = 0
        elif name.startswith("layers."):
            depth = int(name.split(".")[1]) + 1
        else:
            depth = total - 1
        return depth, total

    # ------------------------------------------------------------------ forward

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """The position embedding (1, extra + H·W, C) for a patch grid of this size."""
        return resize_pos_embed(
            self.pos_embed, self.patch_resolution, grid, self.interpolate_mode, self.num_pos_extra_tokens
        )

    def extra_tokens(self) -> list[nn.Parameter]:
        """The learnable tokens prepended to the patches, in order (the cls token first)."""
        return [self.cls_token] if self.cls_token is not None else []

    def run_layer(self, layer: nn.Module, x: Tensor) -> Tensor:
        """Apply one encoder layer, with activation checkpointing if ``with_cp`` while training."""
        return maybe_checkpoint(layer, x, self.with_cp and self.training)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """(B, C_in, H, W) images -> one feature per ``out_indices`` entry."""
        b = x.shape[0]
        x, grid = self.patch_embed(x)  # (B, L, C)
        tokens = [t.expand(b, -1, -1) for t in self.extra_tokens()]
        if not self.pos_embed_covers_extra_tokens:
            x = x + self.pos_embed_for(grid)  # patches only (DeiT III)
        if tokens:
            x = torch.cat((*tokens, x), dim=1)  # (B, extra + L, C)
        if self.pos_embed_covers_extra_tokens:
            x = x + self.pos_embed_for(grid)
        x = self.pre_norm(self.drop_after_pos(x))
        wanted = set(self.out_indices)
        found: dict[int, Tensor] = {}
        for i, layer in enumerate(self.layers):
            x = self.run_layer(layer, x)
            if i == self.num_layers - 1 and self.final_norm:
                x = self.ln1(x)
            if i in wanted:
                found[i] = self._format_output(x, grid)
        return tuple(found[i] for i in self.out_indices)

    def _format_output(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        if self.out_type == "raw":
            return x  # (B, extra + L, C)
        if self.out_type == "cls_token":
            return x[:, 0]  # (B, C)
        patch_tokens = x[:, self.num_extra_tokens:]  # (B, L, C)
        if self.out_type == "featmap":
            b = x.shape[0]
            return patch_tokens.reshape(b, *grid, -1).permute(0, 3, 1, 2)  # (B, C, H', W')
        out: Tensor = self.ln2(patch_tokens.mean(dim=1))  # (B, C)
        return out


# ----------------------------------------------------------------------------- presets

#: MMPretrain's ``arch_zoo`` (the entries expressible as the four integers).
ARCH_ZOO: dict[str, dict[str, int]] = {
    "small": {"embed_dims": 768, "num_layers": 8, "num_heads": 8, "feedforward_channels": 768 * 3},
    "base": {"embed_dims": 768, "num_layers": 12, "num_heads": 12, "feedforward_channels": 3072},
    "large": {"embed_dims": 1024, "num_layers": 24, "num_heads": 16, "feedforward_channels": 4096},
    "huge": {"embed_dims": 1280, "num_layers": 32, "num_heads": 16, "feedforward_channels": 5120},
    "deit-tiny": {"embed_dims": 192, "num_layers": 12, "num_heads": 3, "feedforward_channels": 768},
    "deit-small": {"embed_dims": 384, "num_layers": 12, "num_heads": 6, "feedforward_channels": 1536},
    "deit-base": {"embed_dims": 768, "num_layers": 12, "num_heads": 12, "feedforward_channels": 3072},
}

_ARCH_ALIASES: dict[str, str] = {
    **{name: name for name in ARCH_ZOO},
    "s": "small",
    "b": "base",
    "l": "large",
    "h": "huge",
    "deit-t": "deit-tiny",
    "deit-s": "deit-small",
    "deit-b": "deit-base",
}
