"""Normalisation layers for (N, C) features, shared by necks and heads.

``SyncBN`` is torch's ``SyncBatchNorm``, which synchronises statistics only when
a process group is initialised; :func:`apply_norm` additionally runs it as a
plain, local batch norm on non-CUDA inputs (torch raises there under a CPU
process group), so a spec asking for ``SyncBN`` works on one GPU, on CPU and
under ``torchrun`` alike. MMPretrain's ``NonLinearNeck`` defaults to SyncBN and
fails outside a process group (``open-mmlab/mmselfsup#575``); ours defaults to BN1d.

``LayerNorm2d`` (MMPretrain's ``LN2d``) and ``GRN`` (global response normalisation,
ConvNeXt V2) normalise (N, C, H, W) maps over channels; both also take channels-last
(N, H, W, C) input.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["GRN", "LayerNorm2d", "NormName", "apply_norm", "build_norm1d"]

DataFormat: TypeAlias = Literal["channel_first", "channel_last"]

#: Normalisations of (N, C) features.
NormName: TypeAlias = Literal["BN1d", "SyncBN", "LN"]


def build_norm1d(name: NormName, channels: int, *, affine: bool = True) -> nn.Module:
    """Return a normalisation layer for (N, ``channels``) features."""
    if name == "BN1d":
        return nn.BatchNorm1d(channels, affine=affine)
    if name == "SyncBN":
        return nn.SyncBatchNorm(channels, affine=affine)
    if name == "LN":
        return nn.LayerNorm(channels, elementwise_affine=affine)
    raise ValueError(f"unknown norm {name!r}; expected BN1d, SyncBN or LN")


def apply_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """Run ``norm`` on ``x``; a ``SyncBatchNorm`` on a non-CUDA input runs locally."""
    if isinstance(norm, nn.SyncBatchNorm) and x.device.type != "cuda":
        # Same parameters and buffers, per-process statistics: the only option off-GPU.
        return _BatchNorm.forward(norm, x)
    return norm(x)  # type: ignore[no-any-return]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of (N, C, H, W) maps (MMPretrain's ``LN2d``).

    Parameters ``weight``/``bias`` of shape (C,), as in MMPretrain, torchvision and timm.
    The channels-first path permutes to channels-last and back around ``F.layer_norm``
    (what torchvision's and timm's ``LayerNorm2d`` do).

    Args:
        num_channels: Channels C.
        eps: Added to the variance.

    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: Tensor, data_format: DataFormat = "channel_first") -> Tensor:
        """Normalise ``x`` (N, C, H, W), or (N, H, W, C) with ``data_format="channel_last"``."""
        if data_format == "channel_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 2, 3, 1)  # (N, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (N, C, H, W)


class GRN(nn.Module):
    """Global response normalisation (Woo et al., 2023, ConvNeXt V2; MMPretrain's ``GRN``).

    ``x + gamma * (x * n) + beta`` with ``n = ||x||_spatial / mean_c(||x||_spatial)``;
    ``gamma``/``beta`` start at zero, so the layer starts as the identity.

    Args:
        in_channels: Channels C.
        eps: Added to the mean norm.

    """

    def __init__(self, in_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(in_channels))
        self.beta = nn.Parameter(torch.zeros(in_channels))

    def forward(self, x: Tensor, data_format: DataFormat = "channel_first") -> Tensor:
        """Apply GRN to ``x`` (N, C, H, W), or (N, H, W, C) with ``data_format="channel_last"``."""
        if data_format == "channel_last":
            gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)  # (N, 1, 1, C)
            nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
            return self.gamma * (x * nx) + self.beta + x
        gx = torch.norm(x, p=2, dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
        nx = gx / (gx.mean(dim=1, keepdim=True) + self.eps)
        return self.gamma.view(1, -1, 1, 1) * (x * nx) + self.beta.view(1, -1, 1, 1) + x
