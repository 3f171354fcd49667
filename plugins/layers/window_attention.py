"""Window attention with relative position bias and shifted windows (Swin Transformer).

Provenance: Liu et al., 2021, "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows" (arXiv:2103.14030); MMPretrain's ``WindowMSA``/``ShiftWindowMSA``
(``mmpretrain/models/utils/attention.py``), whose parameter and buffer names these
keep (``w_msa.qkv``, ``w_msa.relative_position_bias_table``, ...), and torchvision's
``shifted_window_attention`` (``torchvision/models/swin_transformer.py``), whose
padding rule these follow so that converted torchvision weights give its logits for
any input size. Difference from MMPretrain (``docs/differences.md``): a feature map
no larger than the window is padded up to it and not shifted in that direction
(torchvision's rule) instead of failing when it is smaller (``pad_small_map=False``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain_builtins.layers.drop import DropPath
from pretrain_builtins.layers.relative_position import relative_position_index

__all__ = ["ShiftWindowMSA", "WindowMSA", "shifted_window_mask", "window_partition", "window_reverse"]

#: Logit added between tokens of different regions of a shifted window (Swin's value).
MASK_VALUE = -100.0


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` -> (B·nW, window², C), windows row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B·nW, window², C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(
    hw: tuple[int, int], window: int, shift: tuple[int, int], device: torch.device | None = None
) -> Tensor:
    """Attention mask (nW, window², window²) of a cyclically shifted, padded map: 0 or -100.

    Tokens that the shift brought together from different image regions must not
    attend to each other. Built exactly as torchvision builds it (per-direction shift).
    """
    h, w = hw
    region = torch.zeros(h, w, device=device)
    count = 0
    for top, bottom in ((0, -window), (-window, -shift[0]), (-shift[0], None)):
        for left, right in ((0, -window), (-window, -shift[1]), (-shift[1], None)):
            region[top:bottom, left:right] = count
            count += 1
    ids = window_partition(region[None, :, :, None], window).squeeze(-1)  # (nW, window²)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return diff.masked_fill(diff != 0, MASK_VALUE).masked_fill(diff == 0, 0.0)


class WindowMSA(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias.

    Args:
        embed_dims: Token width.
        window_size: Window side (square windows).
        num_heads: Attention heads.
        qkv_bias: Bias on the ``qkv`` projection.
        attn_drop: Dropout on the attention weights.
        proj_drop: Dropout after the output projection.

    """

    relative_position_index: Tensor

    def __init__(
        self, embed_dims: int, window_size: int, num_heads: int, qkv_bias: bool = True,
        attn_drop: float = 0.0, proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_dims, self.window_size, self.num_heads = embed_dims, window_size, num_heads
        rows = (2 * window_size - 1) ** 2
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        # A buffer (saved in checkpoints, as MMPretrain and torchvision do), rebuilt when a
        # checkpoint of another window size is resized on load.
        self.register_buffer("relative_position_index", relative_position_index((window_size, window_size)))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def bias(self) -> Tensor:
        """The relative position bias (heads, window², window²)."""
        n = self.window_size**2
        table = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return table.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B·nW, N, C) windows -> (B·nW, N, C); ``mask`` (nW, N, N) of a shifted map."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn_mask = self.bias().unsqueeze(0)  # (1, heads, N, N)
        if mask is not None:
            nw = mask.shape[0]
            # (B, nW, heads, N, N): each window gets its own shift mask on top of the bias.
            attn_mask = attn_mask.unsqueeze(0) + mask[None, :, None].to(attn_mask.dtype)
            q, k, v = (t.reshape(bw // nw, nw, self.num_heads, n, -1) for t in (q, k, v))
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype), dropout_p=drop)
        out = out.reshape(bw, self.num_heads, n, -1).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))  # type: ignore[no-any-return]


class ShiftWindowMSA(nn.Module):
    """(Shifted) window attention over a (B, H·W, C) token map, padding it to whole windows.

    Args:
        embed_dims: Token width.
        num_heads: Attention heads.
        window_size: Window side.
        shift_size: Cyclic shift towards the bottom right (0: plain windows).
        drop_path: Stochastic depth of this residual branch.
        pad_small_map: Keep the shift on maps no larger than the window (MMPretrain's
            detection setting); by default such maps are padded and not shifted.
        qkv_bias: Bias on the ``qkv`` projection.
        attn_drop: Dropout on the attention weights.
        proj_drop: Dropout after the output projection.

    """

    def __init__(
        self, embed_dims: int, num_heads: int, window_size: int, shift_size: int = 0, drop_path: float = 0.0,
        pad_small_map: bool = False, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must be in [0, window_size {window_size})")
        self.window_size, self.shift_size, self.pad_small_map = window_size, shift_size, pad_small_map
        self.w_msa = WindowMSA(embed_dims, window_size, num_heads, qkv_bias, attn_drop, proj_drop)
        self.drop: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, query: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        """(B, H·W, C) -> (B, H·W, C) (the branch output, without the residual)."""
        b, length, c = query.shape
        h, w = hw_shape
        if length != h * w:
            raise ValueError(f"{length} tokens do not form the {h}x{w} map")
        ws = self.window_size
        x = query.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, (-w) % ws, 0, (-h) % ws))  # bottom/right zeros: whole windows
        hp, wp = x.shape[1:3]
        # A direction that fits in one window has nothing to shift (torchvision's rule).
        shift = tuple(self.shift_size if (self.pad_small_map or ws < side) else 0 for side in (hp, wp))
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        mask = shifted_window_mask((hp, wp), ws, shift, x.device) if any(shift) else None  # type: ignore[arg-type]
        windows = self.w_msa(window_partition(x, ws), mask=mask)  # (B·nW, ws², C)
        x = window_reverse(windows, ws, hp, wp)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        x = x[:, :h, :w].reshape(b, h * w, c)
        return self.drop(x)  # type: ignore[no-any-return]
