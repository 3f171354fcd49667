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
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from pretrain.distributed import all_reduce, world_size

__all__ = ["GlobalBatchNorm1d", "NormName", "apply_norm", "build_norm1d", "global_batch_norm"]

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
