"""Relative position bias (BEiT, Swin) and the BEiT attention and encoder layer.

Provenance: Bao et al., 2022, "BEiT" (arXiv:2106.08254) and Liu et al., 2021, "Swin
Transformer" (arXiv:2103.14030); MMPretrain's ``RelativePositionBias`` and
``BEiTTransformerEncoderLayer`` (``mmpretrain/models/backbones/beit.py``),
``BEiTAttention`` and ``resize_relative_position_bias_table``
(``mmpretrain/models/utils/``). Parameter and buffer names match theirs, so MMPretrain
checkpoints load without key mapping. Differences (``docs/differences.md``): the table
is resized with torch's bicubic interpolation (MMPretrain calls SciPy's ``interp2d``,
removed in SciPy 1.14), and the BEiT layer applies stochastic depth once per branch
(MMPretrain's FFN drops the path a second time inside the branch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain_builtins.layers.drop import DropPath
from pretrain_builtins.layers.transformer import FFN, LN_EPS

__all__ = [
    "BEiTAttention",
    "BEiTTransformerEncoderLayer",
    "RelativePositionBias",
    "relative_position_index",
    "resize_relative_position_bias_table",
]

#: Extra table rows of a window with a cls token: cls->token, token->cls, cls->cls.
CLS_EXTRA_ROWS = 3


def relative_position_index(window: tuple[int, int], with_cls_token: bool = False) -> Tensor:
    """Index into a relative position bias table for every (query, key) pair of a window.

    Tokens are the window's positions in row-major order; the table has
    ``(2·Wh − 1)·(2·Ww − 1)`` rows (plus 3 with a cls token: cls→token, token→cls,
    cls→cls, in that order after the grid rows, as in BEiT).

    Args:
        window: (Wh, Ww).
        with_cls_token: Prepend a cls token (index 0 of queries and keys).

    Returns:
        Long (Wh·Ww [+1], Wh·Ww [+1]).

    """
    wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2)
    index = (rel[..., 0] + wh - 1) * (2 * ww - 1) + (rel[..., 1] + ww - 1)  # (N, N)
    if not with_cls_token:
        return index
    grid_rows = (2 * wh - 1) * (2 * ww - 1)
    n = wh * ww
    full = torch.zeros(n + 1, n + 1, dtype=index.dtype)
    full[1:, 1:] = index
    full[0, 0:] = grid_rows  # cls -> token
    full[0:, 0] = grid_rows + 1  # token -> cls
    full[0, 0] = grid_rows + 2  # cls -> cls
    return full


def resize_relative_position_bias_table(
    table: Tensor, src: tuple[int, int], dst: tuple[int, int], extra_rows: int = 0
) -> Tensor:
    """Resize a ((2·Wh−1)·(2·Ww−1) [+ extra], heads) table to another window (bicubic).

    The grid part is interpolated as a (heads, 2·Wh−1, 2·Ww−1) image with aligned corners,
    so the zero offset stays at the centre and the largest offsets at the borders; the
    trailing ``extra_rows`` (a cls token's rows) are kept as they are.
    """
    if tuple(src) == tuple(dst):
        return table
    grid, extra = (table[:-extra_rows], table[-extra_rows:]) if extra_rows else (table, table[:0])
    heads = table.shape[1]
    sh, sw = 2 * src[0] - 1, 2 * src[1] - 1
    dh, dw = 2 * dst[0] - 1, 2 * dst[1] - 1
    if grid.shape[0] != sh * sw:
        raise ValueError(f"relative position table has {grid.shape[0]} grid rows, expected {sh}x{sw}")
    image = grid.t().reshape(1, heads, sh, sw).float()
    resized = F.interpolate(image, size=(dh, dw), mode="bicubic", align_corners=True)
    out = resized.reshape(heads, dh * dw).t().to(table.dtype)
    return torch.cat((out, extra), dim=0)


def table_side(rows: int, extra_rows: int = 0) -> int:
    """Window side of a square table with ``rows`` rows (``(2·W − 1)² + extra``)."""
    side = math.isqrt(rows - extra_rows)
    if side * side != rows - extra_rows or side % 2 == 0:
        raise ValueError(f"a table of {rows} rows is not a square window's (+{extra_rows})")
    return (side + 1) // 2


class RelativePositionBias(nn.Module):
    """BEiT's relative position bias shared by every layer (``use_shared_rel_pos_bias``).

    Args:
        window_size: Patch grid (Wh, Ww).
        num_heads: Attention heads.
        with_cls_token: The sequence starts with a cls token.

    """

    relative_position_index: Tensor

    def __init__(self, window_size: tuple[int, int], num_heads: int, with_cls_token: bool = True) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        extra = CLS_EXTRA_ROWS if with_cls_token else 0
        self.num_relative_distance = (2 * window_size[0] - 1) * (2 * window_size[1] - 1) + extra
        # Zeros, as in MMPretrain (BEiT's shared table starts without a bias).
        self.relative_position_bias_table = nn.Parameter(torch.zeros(self.num_relative_distance, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size, with_cls_token))

    def forward(self) -> Tensor:
        """The bias (heads, N, N) for a sequence of the window's tokens (+ cls)."""
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).contiguous()


class BEiTAttention(nn.Module):
    """Self-attention with q/v biases (no k bias) and an optional per-layer relative position bias.

    Args:
        embed_dims: Token width.
        num_heads: Attention heads.
        window_size: Patch grid of the relative position bias (None without one).
        use_rel_pos_bias: Give this layer its own relative position bias table.
        bias: ``qv_bias`` (learned q and v biases, k bias 0), ``True`` (one fused qkv
            bias) or ``False`` (none).
        attn_drop_rate: Dropout on the attention weights.
        proj_drop_rate: Dropout after the output projection.

    """

    relative_position_index: Tensor | None

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        window_size: tuple[int, int] | None,
        use_rel_pos_bias: bool,
        bias: str | bool = "qv_bias",
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if use_rel_pos_bias and window_size is None:
            raise ValueError("a relative position bias needs the window_size")
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.bias = bias
        if bias == "qv_bias":
            self.q_bias = nn.Parameter(torch.zeros(embed_dims))
            self.v_bias = nn.Parameter(torch.zeros(embed_dims))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=bias is True)
        self.window_size = tuple(window_size) if use_rel_pos_bias and window_size is not None else None
        self.use_rel_pos_bias = use_rel_pos_bias
        if self.window_size is not None:
            rows = (2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1) + CLS_EXTRA_ROWS
            self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
            self.register_buffer("relative_position_index", relative_position_index(self.window_size, True))
        else:
            self.relative_position_bias_table = None
            self.relative_position_index = None
        self.attn_drop = attn_drop_rate
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def forward(self, x: Tensor, rel_pos_bias: Tensor | None = None) -> Tensor:
        """(B, N, C) -> (B, N, C); ``rel_pos_bias`` (heads, N, N) is a shared bias to add."""
        b, n, c = x.shape
        if self.bias == "qv_bias":
            qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
            qkv = F.linear(x, self.qkv.weight, qkv_bias)
        else:
            qkv = self.qkv(x)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # each (B, heads, N, d)
        bias: Tensor | None = None
        if self.relative_position_bias_table is not None:
            assert self.relative_position_index is not None
            table = self.relative_position_bias_table[self.relative_position_index.view(-1)]
            own = table.view(n, n, -1).permute(2, 0, 1)  # (heads, N, N)
            bias = own.unsqueeze(0)
        if rel_pos_bias is not None:
            bias = rel_pos_bias.unsqueeze(0) if bias is None else bias + rel_pos_bias
        drop = self.attn_drop if self.training else 0.0
        attn_mask = None if bias is None else bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)  # (B, heads, N, d)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))  # type: ignore[no-any-return]


class BEiTTransformerEncoderLayer(nn.Module):
    """BEiT block: ``x + γ₁·attn(ln1(x))``, then ``x + γ₂·ffn(ln2(x))`` (γ = layer scale).

    Args:
        embed_dims: Token width.
        num_heads: Attention heads.
        feedforward_channels: MLP hidden width.
        layer_scale_init_value: Initial γ (0: no layer scale, no ``gamma_*`` parameters).
        window_size: Patch grid of a per-layer relative position bias (None without one).
        use_rel_pos_bias: Give the layer its own relative position bias.
        drop_rate: Dropout after the projections and in the MLP.
        attn_drop_rate: Dropout on attention weights.
        drop_path_rate: Stochastic depth of both residual branches.
        bias: Attention biases: ``qv_bias``, ``True`` or ``False`` (see :class:`BEiTAttention`).

    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        feedforward_channels: int,
        layer_scale_init_value: float,
        window_size: tuple[int, int] | None,
        use_rel_pos_bias: bool,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        bias: str | bool = "qv_bias",
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.attn = BEiTAttention(
            embed_dims, num_heads, window_size, use_rel_pos_bias, bias=bias,
            attn_drop_rate=attn_drop_rate, proj_drop_rate=drop_rate,
        )
        self.ln2 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        # MMCV's FFN key layout (layers.0.0, layers.1); its residual is added here.
        self.ffn = FFN(embed_dims, feedforward_channels, ffn_drop=drop_rate)
        self.drop_path: nn.Module = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        if layer_scale_init_value > 0:
            self.gamma_1 = nn.Parameter(torch.full((embed_dims,), float(layer_scale_init_value)))
            self.gamma_2 = nn.Parameter(torch.full((embed_dims,), float(layer_scale_init_value)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: Tensor, rel_pos_bias: Tensor | None = None) -> Tensor:
        """(B, N, C) -> (B, N, C)."""
        attn = self.attn(self.ln1(x), rel_pos_bias=rel_pos_bias)
        x = x + self.drop_path(attn if self.gamma_1 is None else self.gamma_1 * attn)
        ffn = self.ffn.layers(self.ln2(x))
        return x + self.drop_path(ffn if self.gamma_2 is None else self.gamma_2 * ffn)  # type: ignore[no-any-return]

    def init_weights(self) -> None:
        """MMPretrain's init of the block: Xavier MLP (tiny-normal bias), truncated-normal bias table."""
        for m in self.ffn.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)
        if self.attn.relative_position_bias_table is not None:
            nn.init.trunc_normal_(self.attn.relative_position_bias_table, std=0.02)
