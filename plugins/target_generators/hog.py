"""Histogram-of-oriented-gradients targets per patch (MaskFeat).

Provenance: Wei et al., 2022, "Masked Feature Prediction for Self-Supervised Visual
Pre-Training" (arXiv:2112.09133); MMPretrain's ``HOGGenerator``
(``mmpretrain/models/selfsup/maskfeat.py``, from SlowFast). Per channel: reflect-pad
by 1, Sobel gradients ``gx``/``gy``, magnitude ``‖(gx, gy)‖``, orientation
``atan2(gx, gy)`` hard-binned into ``nbins`` unsigned bins, magnitudes weighted by a
Gaussian window tiled over the image, summed over ``pool × pool`` cells and
L2-normalised per cell over the bins. Cells are then grouped per patch.
Differences: the patch grouping is derived from ``patch_size`` and the image (MMPretrain
hard-codes a 14 × 14 grid, i.e. 224-px images with 16-px patches), rectangular images
work, any channel count works, and the gradient kernel can be the plain central
difference (to compare with textbook HOG).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseTargetGenerator
from pretrain.errors import PretrainError

__all__ = ["HOGGenerator", "gaussian_kernel"]


def gaussian_kernel(size: int, std: float) -> Tensor:
    """Normalised 2-D Gaussian (size, size) centred between the middle pixels (MMPretrain's)."""
    n = torch.arange(size, dtype=torch.float32)
    n = (n - n.mean()) / std
    w = torch.exp(-0.5 * n**2)  # (size,)
    kernel = w[:, None] * w[None, :]
    return kernel / kernel.sum()


class HOGGenerator(BaseTargetGenerator):
    """HOG features per patch: (B, C, H, W) -> (B, L, C · nbins · (patch_size / pool)²).

    For a patch the values are ordered (channel, bin, cell row, cell column); with
    the defaults a 224-px RGB image gives (B, 196, 108). Runs under ``no_grad`` and
    has no parameters.

    Args:
        nbins: Orientation bins over 180°.
        pool: Cell size in pixels (gradients are summed per ``pool × pool`` cell).
        gaussian_window: Side of the Gaussian weighting window (σ = half of it),
            tiled over the image; 0 disables the weighting.
        patch_size: Patch size the cells are grouped into (the model's patch size);
            must be a multiple of ``pool``.
        gradient: ``sobel`` (MMPretrain, [1, 2, 1] smoothing) or ``central``
            ([1, 0, -1] only, textbook HOG).

    """

    def __init__(
        self,
        *,
        nbins: Annotated[int, Field(gt=0)] = 9,
        pool: Annotated[int, Field(gt=0)] = 8,
        gaussian_window: Annotated[int, Field(ge=0)] = 16,
        patch_size: Annotated[int, Field(gt=0)] = 16,
        gradient: Literal["sobel", "central"] = "sobel",
    ) -> None:
        super().__init__()
        if patch_size % pool:
            raise ValueError(f"patch_size {patch_size} must be a multiple of pool {pool}")
        self.nbins = nbins
        self.pool = pool
        self.gaussian_window = gaussian_window
        self.patch_size = patch_size
        self.gradient = gradient
        if gradient == "sobel":
            kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        else:
            kx = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
        # Fixed filters: buffers, not saved (they are configuration, not state).
        self.register_buffer("weight_x", kx.view(1, 1, 3, 3), persistent=False)
        self.register_buffer("weight_y", kx.t().contiguous().view(1, 1, 3, 3), persistent=False)
        window = gaussian_kernel(gaussian_window, gaussian_window // 2) if gaussian_window else None
        self.register_buffer("gaussian", window, persistent=False)

    @classmethod
    def spec_issues(cls, params: dict[str, int]) -> list[tuple[str, str]]:
        """``patch_size`` must be a multiple of ``pool``."""
        patch, pool = params.get("patch_size", 16), params.get("pool", 8)
        if patch % pool:
            return [("patch_size", f"{patch} is not a multiple of pool {pool}")]
        return []

    def _check_size(self, h: int, w: int) -> None:
        multiple = math.lcm(self.patch_size, self.gaussian_window or 1)
        for name, step in (("patch_size", self.patch_size), ("gaussian_window", self.gaussian_window)):
            if step and (h % step or w % step):
                raise PretrainError(
                    f"HOGGenerator got {h}x{w} images, which do not tile into its "
                    f"{name} of {step} pixels",
                    hint=f"Use image sizes that are multiples of {multiple}.",
                )

    def cell_histograms(self, x: Tensor) -> Tensor:
        """Per-cell, L2-normalised orientation histograms (B, C, nbins, H/pool, W/pool)."""
        b, c, h, w = x.shape
        self._check_size(h, w)
        x = F.pad(x.float(), (1, 1, 1, 1), mode="reflect")
        gx = F.conv2d(x, self.weight_x.expand(c, 1, 3, 3), groups=c)  # (B, C, H, W)
        gy = F.conv2d(x, self.weight_y.expand(c, 1, 3, 3), groups=c)
        magnitude = torch.stack([gx, gy], dim=-1).norm(dim=-1)  # (B, C, H, W)
        # MMPretrain's convention: angle from the row axis, in units of 180°/nbins.
        phase = torch.atan2(gx, gy) / math.pi * self.nbins  # in [-nbins, nbins]
        if self.gaussian is not None:
            gw = self.gaussian_window
            magnitude = magnitude * self.gaussian.repeat(h // gw, w // gw)
        bins = phase.floor().long() % self.nbins  # unsigned: opposite directions share a bin
        out = torch.zeros(b, c, self.nbins, h, w, dtype=magnitude.dtype, device=x.device)
        out.scatter_add_(2, bins.unsqueeze(2), magnitude.unsqueeze(2))
        out = out.unfold(3, self.pool, self.pool).unfold(4, self.pool, self.pool)
        out = out.sum(dim=(-1, -2))  # (B, C, nbins, H/pool, W/pool)
        return F.normalize(out, p=2, dim=2)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, L, C · nbins · (patch_size/pool)²) patch targets."""
        hog = self.cell_histograms(x)  # (B, C, nbins, Hc, Wc)
        u = self.patch_size // self.pool  # cells per patch side
        hog = hog.flatten(1, 2).permute(0, 2, 3, 1)  # (B, Hc, Wc, C·nbins)
        hog = hog.unfold(1, u, u).unfold(2, u, u)  # (B, Hp, Wp, C·nbins, u, u)
        return hog.flatten(1, 2).flatten(2)  # (B, L, C·nbins·u·u)
