"""Normalisation layers for (N, C) features, shared by necks and heads.

``SyncBN`` is :class:`GlobalBatchNorm1d`: while training under a process group it
normalises with the statistics of the *global* batch, on every device and backend
(NCCL and gloo), through :func:`pretrain.distributed.all_reduce`, whose gradient is
DDP-correct, so a 2-process CPU run equals one process on the same global batch.
Without a process group (or in eval mode) it is a plain ``BatchNorm1d``, so a spec
asking for ``SyncBN`` works on one GPU, on CPU and under ``torchrun`` alike. (torch's
``nn.SyncBatchNorm`` needs CUDA: DDP refuses to wrap it on CPU.) MMPretrain's
``NonLinearNeck`` defaults to SyncBN and fails outside a process group
(``open-mmlab/mmselfsup#575``); ours defaults to BN1d, which is per process.

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

from pretrain.distributed import all_reduce, world_size

__all__ = ["GRN", "GlobalBatchNorm1d", "LayerNorm2d", "NormName", "apply_norm", "build_norm1d", "global_batch_norm"]

DataFormat: TypeAlias = Literal["channel_first", "channel_last"]

#: Normalisations of (N, C) features.
NormName: TypeAlias = Literal["BN1d", "SyncBN", "LN"]


def build_norm1d(name: NormName, channels: int, *, affine: bool = True) -> nn.Module:
    """Return a normalisation layer for (N, ``channels``) features."""
    if name == "BN1d":
        return nn.BatchNorm1d(channels, affine=affine)
    if name == "SyncBN":
        return GlobalBatchNorm1d(channels, affine=affine)
    if name == "LN":
        return nn.LayerNorm(channels, elementwise_affine=affine)
    raise ValueError(f"unknown norm {name!r}; expected BN1d, SyncBN or LN")


def global_batch_norm(norm: _BatchNorm, x: Tensor) -> Tensor:
    """Training-mode batch norm of ``x`` (N, C, *) over every rank's samples, differentiably.

    The same result (and running-statistics update) as one process holding the whole
    global batch; the gradients through the shared mean and variance follow
    :func:`pretrain.distributed.all_reduce`'s DDP-correct contract.
    """
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    n = all_reduce(x.new_tensor(float(x.numel() // max(x.shape[1], 1))))  # values per channel, all ranks
    mean = all_reduce(x.sum(dim=dims)) / n  # (C,)
    centred = x - mean.view(shape)
    var = all_reduce(centred.pow(2).sum(dim=dims)) / n  # (C,) biased, as batch norm normalises
    y = centred * torch.rsqrt(var + norm.eps).view(shape)
    if norm.affine:
        y = y * norm.weight.view(shape) + norm.bias.view(shape)
    if norm.track_running_stats and norm.running_mean is not None and norm.running_var is not None:
        with torch.no_grad():
            assert norm.num_batches_tracked is not None
            norm.num_batches_tracked.add_(1)
            factor = (1.0 / float(norm.num_batches_tracked) if norm.momentum is None
                      else float(norm.momentum))
            unbiased = var.detach() * (n / (n - 1).clamp(min=1))
            norm.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
            norm.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
    return y


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics span every process (``SyncBN``), on any device.

    State-dict keys and eval behaviour are ``BatchNorm1d``'s; in training under a
    process group the statistics come from :func:`global_batch_norm`.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` (N, C) or (N, C, L)."""
        if self.training and world_size() > 1:
            return global_batch_norm(self, x)
        return super().forward(x)


def apply_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """Run ``norm`` on ``x``; a torch ``SyncBatchNorm`` off CUDA uses the global batch when distributed."""
    if isinstance(norm, nn.SyncBatchNorm) and x.device.type != "cuda":
        if norm.training and world_size() > 1:
            return global_batch_norm(norm, x)
        # Same parameters and buffers, per-process statistics (one process, or eval mode).
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
