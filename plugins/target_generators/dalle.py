"""DALL-E's dVAE encoder, BEiT v1's tokenizer: images -> logits over 8192 visual words per 8x8 cell.

Provenance: Ramesh et al., 2021, "Zero-Shot Text-to-Image Generation" (arXiv:2102.12092)
and ``openai/DALL-E`` (``dall_e/encoder.py``), as ported by BEiT and MMPretrain
(``DALLEEncoder`` registered as ``DALL-E``, ``mmpretrain/models/selfsup/cae.py``); same
keys (``blocks.input.w``, ``blocks.group_1.block_1.res_path.conv_1.w``, ...), so
``dalle_encoder.pth`` converts by name. Frozen (see ``_frozen.py``). Differences: no
float16 weights on CUDA (use the run's precision instead); ``requires_grad``/``device``
are not fields (it is frozen, and the engine places it).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pretrain_builtins.target_generators._frozen import FrozenTokenizer

__all__ = ["DALLEEncoder"]


class DalleConv2d(nn.Module):
    """DALL-E's convolution: parameters ``w`` and ``b``, 'same' padding, N(0, 1/fan_in) init.

    Args:
        n_in: Input channels.
        n_out: Output channels.
        kw: Square kernel size (odd).

    """

    def __init__(self, n_in: int, n_out: int, kw: int) -> None:
        super().__init__()
        self.kw = kw
        self.w = nn.Parameter(torch.empty(n_out, n_in, kw, kw).normal_(std=1 / math.sqrt(n_in * kw**2)))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        """Convolve with zero padding that keeps the size."""
        return F.conv2d(x, self.w.to(x.dtype), self.b.to(x.dtype), padding=(self.kw - 1) // 2)


class EncoderBlock(nn.Module):
    """Residual block: identity (or 1x1 conv) + post_gain · (relu-conv3 x3, relu-conv1).

    Args:
        n_in: Input channels.
        n_out: Output channels.
        n_layers: Blocks in the whole encoder (sets ``post_gain = 1 / n_layers²``).

    """

    def __init__(self, n_in: int, n_out: int, n_layers: int) -> None:
        super().__init__()
        hid = n_out // 4
        self.post_gain = 1 / n_layers**2
        self.id_path: nn.Module = DalleConv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(OrderedDict([
            ("relu_1", nn.ReLU()), ("conv_1", DalleConv2d(n_in, hid, 3)),
            ("relu_2", nn.ReLU()), ("conv_2", DalleConv2d(hid, hid, 3)),
            ("relu_3", nn.ReLU()), ("conv_3", DalleConv2d(hid, hid, 3)),
            ("relu_4", nn.ReLU()), ("conv_4", DalleConv2d(hid, n_out, 1)),
        ]))

    def forward(self, x: Tensor) -> Tensor:
        """(B, n_in, H, W) -> (B, n_out, H, W)."""
        return self.id_path(x) + self.post_gain * self.res_path(x)  # type: ignore[no-any-return]


class DALLEEncoder(FrozenTokenizer):
    """DALL-E's encoder (BEiT v1's tokenizer): (B, C, H, W) -> visual-word logits (B, vocab, H/8, W/8).

    BEiT v1 feeds it the second, half-size picture (112 px for 224-px images) normalised
    to DALL-E's range (``second_mean = -31.875``, ``second_std = 318.75`` on the model);
    ``BEiTV1Head`` takes the arg-max as the target of each patch. Frozen; needs the
    converted ``dalle_encoder.pth`` unless ``allow_random_init``.

    Args:
        group_count: Groups of blocks (each but the last halves the resolution).
        n_hid: Width of the first group (group ``g`` is ``2^(g-1)·n_hid`` wide).
        n_blk_per_group: Blocks per group.
        input_channels: Image channels.
        vocab_size: Visual words (output channels).
        allow_random_init: Produce targets from random weights (only for smoke tests: a random
            tokenizer's targets teach the encoder almost nothing).

    """

    type_name = "DALL-E"
    convert_arch = "dalle"
    example_config: ClassVar[dict[str, Any]] = {
        "group_count": 2, "n_hid": 8, "n_blk_per_group": 1, "vocab_size": 16, "allow_random_init": True,
    }
    #: DALL-E initialises its own convolutions; no class-level rules.
    default_init: ClassVar[list[dict[str, Any]]] = []

    def __init__(
        self,
        *,
        group_count: Annotated[int, Field(gt=0)] = 4,
        n_hid: Annotated[int, Field(gt=0)] = 256,
        n_blk_per_group: Annotated[int, Field(gt=0)] = 2,
        input_channels: Annotated[int, Field(gt=0)] = 3,
        vocab_size: Annotated[int, Field(gt=0)] = 8192,
        allow_random_init: bool = False,
    ) -> None:
        super().__init__(allow_random_init=allow_random_init)
        self.input_channels, self.vocab_size = input_channels, vocab_size
        n_layers = group_count * n_blk_per_group
        groups: list[tuple[str, nn.Module]] = [("input", DalleConv2d(input_channels, n_hid, 7))]
        width = n_hid
        for g in range(1, group_count + 1):
            out = 2 ** (g - 1) * n_hid
            blocks: list[tuple[str, nn.Module]] = [
                (f"block_{i + 1}", EncoderBlock(width if i == 0 else out, out, n_layers))
                for i in range(n_blk_per_group)
            ]
            if g < group_count:
                blocks.append(("pool", nn.MaxPool2d(kernel_size=2)))
            groups.append((f"group_{g}", nn.Sequential(OrderedDict(blocks))))
            width = out
        groups.append(("output", nn.Sequential(OrderedDict([
            ("relu", nn.ReLU()), ("conv", DalleConv2d(width, vocab_size, 1)),
        ]))))
        self.blocks = nn.Sequential(OrderedDict(groups))
        self.freeze()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised images -> logits (B, vocab_size, H/2^(g-1), W/2^(g-1)), float32."""
        self.check_weights()
        if x.dim() != 4 or x.shape[1] != self.input_channels:
            raise ValueError(f"DALL-E expects (B, {self.input_channels}, H, W) images, got {tuple(x.shape)}")
        with torch.autocast(x.device.type, enabled=False):
            return self.blocks(x.float())  # type: ignore[no-any-return]
