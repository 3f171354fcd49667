"""Vision Transformer for MoCo v3: fixed sin-cos positions, optionally a frozen random patch projection.

Provenance: Chen et al., 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers" (arXiv:2104.02057, facebookresearch/moco-v3 ``vits.py``); MMPretrain's
``MoCoV3ViT`` (``mmpretrain/models/selfsup/mocov3.py``): the ViT fields plus
``stop_grad_conv1``, ``frozen_stages`` and ``norm_eval``, the ``mocov3-small``
(``mocov3-s``) arch (384 wide, 12 layers, 12 heads), and its initialisation: a fixed
2-D sin-cos position embedding, Xavier-uniform patch projection and Linear layers
(the ``qkv`` projection as three separate matrices), zero biases, cls token N(0, 1e-6).

Differences (``docs/differences.md``): the position embedding is frozen at
construction, so ``pretrain validate`` counts it as not trainable (MMPretrain freezes
it in ``init_weights``, after its parameter count is usually taken, which is why its
published ViT-S trainable count is 75,648 higher); ``mocov3-small`` is known to this
class only (MMPretrain adds it to ``VisionTransformer.arch_zoo`` globally, as a side
effect of constructing a ``MoCoV3ViT``); ``frozen_stages = num_layers`` freezes the
final norm ``ln1`` (MMPretrain looks up a non-existent ``norm1`` and raises
``AttributeError``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar

from pydantic import Field
from torch import Tensor, nn

from pretrain_builtins.backbones.mae_vit import build_2d_sincos_position_embedding, sincos_pos_embed_for
from pretrain_builtins.backbones.vision_transformer import InterpolateMode, OutType, VisionTransformer

__all__ = ["MOCOV3_ARCHS", "MoCoV3ViT"]

#: The arch MoCo v3 adds to MMPretrain's ViT presets.
_MOCOV3_SMALL = {"embed_dims": 384, "num_layers": 12, "num_heads": 12, "feedforward_channels": 1536}
MOCOV3_ARCHS: dict[str, dict[str, int]] = {"mocov3-small": _MOCOV3_SMALL, "mocov3-s": _MOCOV3_SMALL}


def _arch(arch: Any) -> Any:
    """A ``mocov3-*`` name as its table; anything else unchanged (the ViT checks judge it)."""
    if isinstance(arch, str) and arch.lower() in MOCOV3_ARCHS:
        return dict(MOCOV3_ARCHS[arch.lower()])
    return arch


class MoCoV3ViT(VisionTransformer):
    """ViT for MoCo v3 pretraining: fixed sin-cos position embedding, optional frozen patch projection.

    Returns what ``VisionTransformer`` returns (the cls token by default).

    Args:
        arch: A ViT preset, ``mocov3-small``/``mocov3-s`` (384 wide, 12 layers, 12 heads),
            or a table with integer ``embed_dims``, ``num_layers``, ``num_heads`` and
            ``feedforward_channels``.
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
        frozen_stages: Freeze the patch embedding, tokens and the first this-many layers
            (-1: nothing; ``num_layers`` also freezes the final norm).
        interpolate_mode: How the position embedding is resized for other grids.
        stop_grad_conv1: Freeze the (randomly initialised) patch projection, MoCo v3's
            remedy for training instability.
        norm_eval: Keep BatchNorm layers in eval mode while training (MMPretrain's
            field; a ViT has none, so this only matters to subclasses that add some).
        with_cp: Activation checkpointing of every layer while training (saves memory).

    """

    example_config: ClassVar[dict[str, Any]] = {
        "arch": {"embed_dims": 16, "num_layers": 2, "num_heads": 2, "feedforward_channels": 32},
        "img_size": 32,
        "patch_size": 8,
        "stop_grad_conv1": True,
    }

    def __init__(
        self,
        *,
        arch: str | dict[str, int] = "mocov3-small",
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
        stop_grad_conv1: bool = False,
        norm_eval: bool = False,
        with_cp: bool = False,
    ) -> None:
        super().__init__(
            arch=_arch(arch), img_size=img_size, patch_size=patch_size, in_channels=in_channels,
            out_indices=out_indices, drop_rate=drop_rate, drop_path_rate=drop_path_rate, qkv_bias=qkv_bias,
            final_norm=final_norm, out_type=out_type, with_cls_token=with_cls_token,
            frozen_stages=frozen_stages, interpolate_mode=interpolate_mode, with_cp=with_cp,
        )
        self.arch = arch if isinstance(arch, str) else dict(arch)
        if self.embed_dims % 4:
            raise ValueError(f"embed_dims ({self.embed_dims}) must be divisible by 4 for sin-cos positions")
        # Fixed 2-D sin-cos positions (still a parameter: checkpoints carry it, as MMPretrain's).
        self.pos_embed.requires_grad_(False)
        self.stop_grad_conv1 = stop_grad_conv1
        self.norm_eval = norm_eval
        if stop_grad_conv1:
            self.patch_embed.projection.requires_grad_(False)

    @staticmethod
    def arch_settings(arch: str | Mapping[str, int]) -> dict[str, int]:
        """The four sizes of ``arch``: the ViT presets plus ``mocov3-small``."""
        return VisionTransformer.arch_settings(_arch(arch))

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """ViT checks (with the ``mocov3-*`` archs), plus: sin-cos needs width % 4 == 0."""
        arch = _arch(params.get("arch", "mocov3-small"))
        issues = list(super().spec_issues({**params, "arch": arch}))
        if not any(name == "arch" for name, _ in issues):
            dims = cls.arch_settings(arch)["embed_dims"]
            if dims % 4:
                issues.append(("arch", f"embed_dims ({dims}) must be divisible by 4 for the sin-cos "
                                       "position embedding"))
        return issues

    def post_init_weights(self) -> None:
        """MoCo v3's init: sin-cos positions, Xavier patch projection and Linears, cls N(0, 1e-6)."""
        self.pos_embed.data.copy_(
            build_2d_sincos_position_embedding(self.patch_resolution, self.embed_dims, cls_token=True)
        )
        proj = self.patch_embed.projection
        # Xavier-uniform over the flattened patch (MMPretrain hard-codes 3 input channels here).
        fan_in = proj.weight.shape[1] * proj.weight.shape[2] * proj.weight.shape[3]
        val = math.sqrt(6.0 / float(fan_in + self.embed_dims))
        nn.init.uniform_(proj.weight, -val, val)
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if "qkv" in name:  # Q, K and V are three matrices of embed_dims rows each
                    val = math.sqrt(6.0 / float(m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -val, val)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        assert self.cls_token is not None or not self.with_cls_token
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """The stored embedding for the built grid, else the exact sin-cos table for ``grid``."""
        if self.with_cls_token:
            return sincos_pos_embed_for(self.pos_embed, self.patch_resolution, grid)
        return super().pos_embed_for(grid)

    def train(self, mode: bool = True) -> MoCoV3ViT:
        """Switch mode; frozen stages stay in eval, and BatchNorm too with ``norm_eval``."""
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self
