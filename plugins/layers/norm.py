"""Normalisation layers for (N, C) features, shared by necks and heads.

``SyncBN`` is torch's ``SyncBatchNorm``, which synchronises statistics only when
a process group is initialised; :func:`apply_norm` additionally runs it as a
plain, local batch norm on non-CUDA inputs (torch raises there under a CPU
process group), so a spec asking for ``SyncBN`` works on one GPU, on CPU and
under ``torchrun`` alike. MMPretrain's ``NonLinearNeck`` defaults to SyncBN and
fails outside a process group (``open-mmlab/mmselfsup#575``); ours defaults to BN1d.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["NormName", "apply_norm", "build_norm1d"]

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
