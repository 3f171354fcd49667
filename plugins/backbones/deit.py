"""DeiT backbones: the distilled ViT (a distillation token) and DeiT III (layer scale).

Papers: Touvron et al., 2021, "Training data-efficient image transformers &
distillation through attention" (arXiv:2012.12877); Touvron et al., 2022, "DeiT III:
Revenge of the ViT" (arXiv:2204.07118).

Provenance: MMPretrain ``mmpretrain/models/backbones/deit.py`` and ``deit3.py``. Both
are :class:`VisionTransformer` configurations: ``DistilledVisionTransformer`` adds a
``dist_token`` after the cls token (position embedding over both), ``DeiT3`` turns on
layer scale and adds the position embedding to the patches only, before the cls token
is prepended (``pos_embed`` has no cls slot). Key names are MMPretrain's (timm's
``deit_*_distilled_*`` and ``deit3_*`` weights convert one to one). Differences
(``docs/differences.md``): the distilled backbone's ``cls_token`` output is one
(B, 2, C) tensor (cls and distillation token) instead of a nested tuple, so it is a
plain tensor like every backbone output; MMPretrain's ``DeiT3`` block normalises the
MLP input with ``ln1`` again and never uses ``ln2`` (a bug: converted weights then
give wrong outputs); ours uses ``ln2`` like the paper and timm.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from pretrain_builtins.backbones.vision_transformer import InterpolateMode, OutType, VisionTransformer
from pretrain_builtins.layers import inherit_args_doc

__all__ = ["DEIT3_ARCH_ZOO", "DeiT3", "DistilledVisionTransformer"]


class DistilledVisionTransformer(VisionTransformer):
    """DeiT with distillation: a ViT with a cls token and a distillation token.

    With ``out_type = "cls_token"`` each output is (B, 2, C): the cls token's and the
    distillation token's features, for :class:`DeiTClsHead`; the other output types
    are :class:`VisionTransformer`'s (patch tokens exclude both tokens).
    """

    num_additional_tokens: ClassVar[int] = 1

    #: A small instance for the conformance kit (``pretrain.testing``).
    example_config: ClassVar[dict[str, Any]] = {
        "arch": {"embed_dims": 16, "num_layers": 2, "num_heads": 2, "feedforward_channels": 32},
        "img_size": 32,
        "patch_size": 8,
    }

    def __init__(self, *, arch: str | dict[str, int] = "deit-base", **kwargs: Any) -> None:
        if not kwargs.get("with_cls_token", True):
            raise ValueError("DistilledVisionTransformer: with_cls_token must be true")
        super().__init__(arch=arch, **kwargs)
        self.dist_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims))
        if self.frozen_stages > 0:
            self.dist_token.requires_grad_(False)

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """:class:`VisionTransformer`'s checks; the cls token is required."""
        if not params.get("with_cls_token", True):
            yield "with_cls_token", "DistilledVisionTransformer always has the cls token; leave it true"
        yield from super().spec_issues({**params, "arch": params.get("arch", "deit-base")})

    def extra_tokens(self) -> list[nn.Parameter]:
        """The cls token, then the distillation token."""
        tokens = super().extra_tokens()
        dist = getattr(self, "dist_token", None)  # absent while the base __init__ runs
        return [*tokens, dist] if dist is not None else tokens

    def post_init_weights(self) -> None:
        """ViT's init, plus a truncated-normal distillation token (MMPretrain)."""
        super().post_init_weights()
        nn.init.trunc_normal_(self.dist_token, std=0.02)

    def _format_output(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        if self.out_type == "cls_token":
            return x[:, :2]  # (B, 2, C): cls and distillation tokens
        return super()._format_output(x, grid)


inherit_args_doc(
    DistilledVisionTransformer, VisionTransformer,
    {
        "arch": "A ViT preset (default ``deit-base``; ``deit-tiny``/``deit-t``, ``deit-small``/"
        "``deit-s``, ``deit-base``/``deit-b``, ``small``, ``base``, ``large``, ``huge``) or a "
        "table with integer ``embed_dims``, ``num_layers``, ``num_heads`` and ``feedforward_channels``.",
        "out_type": '``cls_token`` (B, 2, C: cls and distillation tokens), ``featmap``, '
        '``avg_featmap`` or ``raw``.',
        "with_cls_token": "Always true (the distilled model needs its cls token).",
    },
)

#: MMPretrain's ``DeiT3.arch_zoo``.
DEIT3_ARCH_ZOO: dict[str, dict[str, int]] = {
    "small": {"embed_dims": 384, "num_layers": 12, "num_heads": 6, "feedforward_channels": 1536},
    "medium": {"embed_dims": 512, "num_layers": 12, "num_heads": 8, "feedforward_channels": 2048},
    "base": {"embed_dims": 768, "num_layers": 12, "num_heads": 12, "feedforward_channels": 3072},
    "large": {"embed_dims": 1024, "num_layers": 24, "num_heads": 16, "feedforward_channels": 4096},
    "huge": {"embed_dims": 1280, "num_layers": 32, "num_heads": 16, "feedforward_channels": 5120},
}
_DEIT3_ALIASES = {**{k: k for k in DEIT3_ARCH_ZOO}, "s": "small", "m": "medium", "b": "base", "l": "large", "h": "huge"}


class DeiT3(VisionTransformer):
    """DeiT III backbone: a ViT with layer scale whose position embedding skips the cls token.

    The patches get the position embedding, then the cls token is prepended (so
    ``pos_embed`` is (1, H·W, C)); both residual branches of every layer are scaled
    by a learnable per-channel ``gamma`` (layer scale).

    Args:
        arch: ``small``/``s`` (384 wide, 12 layers, 6 heads), ``medium``/``m`` (512, 12, 8),
            ``base``/``b`` (768, 12, 12), ``large``/``l`` (1024, 24, 16), ``huge``/``h``
            (1280, 32, 16; patch 14 in the paper), or a table with integer ``embed_dims``,
            ``num_layers``, ``num_heads`` and ``feedforward_channels``.
        img_size: Input size the position embedding is built for (int or [H, W]).
        patch_size: Square patch size in pixels.
        in_channels: Image channels.
        out_indices: Encoder layer(s) to output; negative values count from the end.
        drop_rate: Dropout after the position embedding, the projections and in the MLPs.
        drop_path_rate: Stochastic depth, rising linearly from 0 to this value over the layers.
        qkv_bias: Whether the attention ``qkv`` projection has a bias.
        final_norm: Apply a LayerNorm (``ln1``) after the last layer.
        out_type: ``cls_token``, ``featmap``, ``avg_featmap`` or ``raw``.
        with_cls_token: Prepend a learnable cls token (required by ``out_type = "cls_token"``).
        use_layer_scale: Scale both residual branches by a learnable per-channel ``gamma``.
        layer_scale_init_value: Initial value of ``gamma`` when ``use_layer_scale`` (MMPretrain: 1e-5).
        frozen_stages: Freeze the patch embedding, tokens and the first this-many layers.
        interpolate_mode: How the position embedding is resized for other grids.
        with_cp: Activation checkpointing of every layer while training (saves memory).

    """

    #: A small instance for the conformance kit (``pretrain.testing``).
    example_config: ClassVar[dict[str, Any]] = {
        "arch": {"embed_dims": 16, "num_layers": 2, "num_heads": 2, "feedforward_channels": 32},
        "img_size": 32,
        "patch_size": 8,
    }

    pos_embed_covers_extra_tokens: ClassVar[bool] = False

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
        use_layer_scale: bool = True,
        layer_scale_init_value: Annotated[float, Field(gt=0.0)] = 1e-5,
        frozen_stages: Annotated[int, Field(ge=-1)] = -1,
        interpolate_mode: InterpolateMode = "bicubic",
        with_cp: bool = False,
    ) -> None:
        super().__init__(
            arch=self.arch_settings(arch), img_size=img_size, patch_size=patch_size,
            in_channels=in_channels, out_indices=out_indices, drop_rate=drop_rate,
            drop_path_rate=drop_path_rate, qkv_bias=qkv_bias, final_norm=final_norm,
            out_type=out_type, with_cls_token=with_cls_token, frozen_stages=frozen_stages,
            interpolate_mode=interpolate_mode,
            layer_scale_init_value=layer_scale_init_value if use_layer_scale else 0.0,
            with_cp=with_cp,
        )
        self.arch = arch if isinstance(arch, str) else dict(arch)
        self.use_layer_scale = use_layer_scale

    @staticmethod
    def arch_settings(arch: str | Mapping[str, int]) -> dict[str, int]:
        """Resolve a DeiT III preset (case-insensitive) or custom table to its four sizes."""
        if isinstance(arch, str):
            return dict(DEIT3_ARCH_ZOO[_DEIT3_ALIASES[arch.lower()]])
        return VisionTransformer.arch_settings(arch)

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """Unknown presets name DeiT III's; the rest are :class:`VisionTransformer`'s checks."""
        arch = params.get("arch", "base")
        if isinstance(arch, str):
            if arch.lower() not in _DEIT3_ALIASES:
                yield "arch", (
                    f"unknown DeiT III arch {arch!r}; choose one of {', '.join(sorted(_DEIT3_ALIASES))} "
                    "or give a table with embed_dims, num_layers, num_heads, feedforward_channels"
                )
                return
            arch = cls.arch_settings(arch)
        yield from super().spec_issues({**params, "arch": arch})
