"""Transformer building blocks shared by the ViT family (ViT/DeiT, MAE encoder and decoder).

Provenance: MMCV's ``PatchEmbed`` (``padding='corner'``) and ``FFN``
(``mmcv/cnn/bricks/transformer.py``), MMPretrain's ``MultiheadAttention``,
``LayerScale``, ``TransformerEncoderLayer`` and ``resize_pos_embed``
(``mmpretrain/models/utils/``, ``mmpretrain/models/backbones/vision_transformer.py``).
Child names match theirs so MMPretrain checkpoints load without key mapping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain_builtins.layers.drop import DropPath

__all__ = [
    "FFN",
    "LN_EPS",
    "LayerScale",
    "MultiheadAttention",
    "PatchEmbed",
    "TransformerEncoderLayer",
    "is_square",
    "pair",
    "replace_masked",
    "resize_pos_embed",
]

#: LayerNorm epsilon of every ViT norm (MMPretrain's ``norm_cfg=dict(type='LN', eps=1e-6)``).
LN_EPS = 1e-6

# ----------------------------------------------------------------------------- helpers


def pair(value: int | Sequence[int]) -> tuple[int, int]:
    """``S`` -> ``(S, S)``; ``[H, W]`` -> ``(H, W)``."""
    if isinstance(value, int):
        return value, value
    h, w = value
    return int(h), int(w)


def is_square(n: int) -> bool:
    """Whether ``n`` is a perfect square (a square patch grid)."""
    return n >= 0 and math.isqrt(n) ** 2 == n


def resize_pos_embed(
    pos_embed: Tensor,
    src_shape: tuple[int, int],
    dst_shape: tuple[int, int],
    mode: str = "bicubic",
    num_extra_tokens: int = 1,
) -> Tensor:
    """Resize a (1, extra + H·W, C) position embedding to another patch grid.

    The extra (cls) tokens are kept; the grid part is interpolated as an image.

    Args:
        pos_embed: Position embedding (1, L, C).
        src_shape: (H, W) grid of ``pos_embed``.
        dst_shape: (H, W) grid wanted.
        mode: ``F.interpolate`` mode.
        num_extra_tokens: Leading tokens that are not part of the grid.

    Returns:
        The resized embedding (1, extra + H'·W', C); ``pos_embed`` itself when the grids match.

    """
    if tuple(src_shape) == tuple(dst_shape):
        return pos_embed
    _, length, channels = pos_embed.shape
    src_h, src_w = src_shape
    if length != num_extra_tokens + src_h * src_w:
        raise ValueError(
            f"position embedding has {length} tokens, expected {num_extra_tokens} extra + "
            f"{src_h}x{src_w} grid"
        )
    extra = pos_embed[:, :num_extra_tokens]
    grid = pos_embed[:, num_extra_tokens:].reshape(1, src_h, src_w, channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(dst_shape), mode=mode, align_corners=False)  # (1, C, H', W')
    grid = grid.flatten(2).transpose(1, 2)  # (1, H'·W', C)
    return torch.cat((extra, grid), dim=1)


def replace_masked(tokens: Tensor, mask: Tensor, mask_token: Tensor) -> Tensor:
    """Patch tokens (B, L, C) with the masked ones (mask (B, ...) of L entries, True = masked) replaced."""
    b, length, _ = tokens.shape
    if mask.shape[0] != b or mask[0].numel() != length:
        raise ValueError(f"mask {tuple(mask.shape)} does not cover the {length} patches of the images (the patch grid)")
    w = mask.reshape(b, length, 1).to(tokens.dtype)
    return tokens * (1.0 - w) + mask_token.to(tokens.dtype) * w


# ----------------------------------------------------------------------------- blocks


class PatchEmbed(nn.Module):
    """Image to patch tokens: a ``kernel = stride = patch_size`` convolution.

    Inputs whose size is not a multiple of the patch size are zero-padded at the
    bottom/right first (MMCV's ``AdaptivePadding(padding='corner')``).

    Args:
        in_channels: Image channels.
        embed_dims: Token width.
        patch_size: Square patch size in pixels.
        img_size: The (H, W) the model is built for (sets ``init_out_size``).
        bias: Whether the projection has a bias (MMPretrain: ``not pre_norm``).

    """

    def __init__(
        self,
        in_channels: int,
        embed_dims: int,
        patch_size: int,
        img_size: tuple[int, int],
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(
            in_channels, embed_dims, kernel_size=patch_size, stride=patch_size, bias=bias
        )
        self.init_out_size = (
            math.ceil(img_size[0] / patch_size),
            math.ceil(img_size[1] / patch_size),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Return tokens (B, H'·W', C) and the grid (H', W')."""
        p = self.patch_size
        pad_h, pad_w = (-x.shape[-2]) % p, (-x.shape[-1]) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.projection(x)  # (B, C, H', W')
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        return x.flatten(2).transpose(1, 2), grid  # (B, H'·W', C)


class LayerScale(nn.Module):
    """Per-channel learnable scale (CaiT), parameter named ``weight`` as in MMPretrain.

    Args:
        dim: Channels.
        init_value: Initial value of every scale.

    """

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        """Scale the last dimension."""
        return x * self.weight


def _branch_scale(embed_dims: int, init_value: float) -> nn.Module:
    """A residual branch's LayerScale, or identity when ``init_value`` is 0."""
    return LayerScale(embed_dims, init_value) if init_value > 0 else nn.Identity()


def _branch_drop(rate: float) -> nn.Module:
    """A residual branch's stochastic depth, or identity when ``rate`` is 0."""
    return DropPath(rate) if rate > 0 else nn.Identity()


class MultiheadAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (MMPretrain layout).

    Args:
        embed_dims: Token width.
        num_heads: Attention heads (must divide ``embed_dims``).
        qkv_bias: Bias on the ``qkv`` projection.
        attn_drop: Dropout on the attention weights.
        proj_drop: Dropout after the output projection.
        drop_path: Stochastic depth of this residual branch.
        layer_scale_init_value: LayerScale init (0 disables it).

    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims {embed_dims} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)
        self.gamma1 = _branch_scale(embed_dims, layer_scale_init_value)
        self.out_drop = _branch_drop(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """Return the attention branch output (without the residual)."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dims)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, head_dims)
        drop = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, heads, N, head_dims)
        x = x.transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        x = self.proj(x)
        return self.out_drop(self.gamma1(self.proj_drop(x)))


class FFN(nn.Module):
    """Two-layer MLP with GELU and a residual connection (MMCV's ``FFN`` key layout).

    ``layers.0.0`` is the first Linear, ``layers.1`` the second, so MMPretrain
    checkpoints map one to one.

    Args:
        embed_dims: Token width.
        feedforward_channels: Hidden width.
        ffn_drop: Dropout after the activation and after the second Linear.
        drop_path: Stochastic depth of this residual branch.
        layer_scale_init_value: LayerScale init (0 disables it).

    """

    def __init__(
        self,
        embed_dims: int,
        feedforward_channels: int,
        ffn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 0.0,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(
                nn.Linear(embed_dims, feedforward_channels), nn.GELU(), nn.Dropout(ffn_drop)
            ),
            nn.Linear(feedforward_channels, embed_dims),
            nn.Dropout(ffn_drop),
        )
        self.gamma2 = _branch_scale(embed_dims, layer_scale_init_value)
        self.dropout_layer = _branch_drop(drop_path)

    def forward(self, x: Tensor, identity: Tensor) -> Tensor:
        """Return ``identity + branch(x)``."""
        return identity + self.dropout_layer(self.gamma2(self.layers(x)))


class TransformerEncoderLayer(nn.Module):
    """Pre-norm Transformer block: ``x + attn(ln1(x))`` then ``x + ffn(ln2(x))``.

    Args:
        embed_dims: Token width.
        num_heads: Attention heads.
        feedforward_channels: MLP hidden width.
        layer_scale_init_value: LayerScale init (0 disables it).
        drop_rate: Dropout after projections and in the MLP.
        attn_drop_rate: Dropout on attention weights.
        drop_path_rate: Stochastic depth of both residual branches.
        qkv_bias: Bias on the ``qkv`` projection.

    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        feedforward_channels: int,
        layer_scale_init_value: float = 0.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.attn = MultiheadAttention(
            embed_dims,
            num_heads,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop_rate,
            proj_drop=drop_rate,
            drop_path=drop_path_rate,
            layer_scale_init_value=layer_scale_init_value,
        )
        self.ln2 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.ffn = FFN(
            embed_dims,
            feedforward_channels,
            ffn_drop=drop_rate,
            drop_path=drop_path_rate,
            layer_scale_init_value=layer_scale_init_value,
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, C) -> (B, N, C)."""
        x = x + self.attn(self.ln1(x))
        return self.ffn(self.ln2(x), identity=x)

    def init_ffn(self) -> None:
        """MMPretrain's ``TransformerEncoderLayer.init_weights``: Xavier MLP, tiny-normal bias."""
        for m in self.ffn.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)


