"""Collectives for component authors, with gradients that are correct under DDP.

Self-supervised losses often need the whole global batch: SimCLR's negatives,
MoCo v3's keys, Barlow Twins' cross-correlation matrix. The collectives here
work the same in every setting: without a process group (one process, CPU or
one GPU) they are the identity, so a component never has to check.

Gradient contract. DDP averages the gradients of the ranks. For a run over ``W``
processes to equal one process on the same global batch, the gradient a rank
keeps for its local tensor must be the *sum over ranks* of the gradients that
flow into it. Hence:

* :func:`all_gather` concatenates every rank's tensor (dim 0) and its backward
  all-reduces (sums) the incoming gradient, then returns this rank its own slice.
  MMPretrain's ``GatherLayer`` (``selfsup/simclr.py``) returns only the local
  slice, which scales gradients by ``1 / world_size`` (lightly ``#1528``).
* :func:`all_reduce` sums every rank's tensor and its backward sums the incoming
  gradients again. A plain ``torch.distributed.all_reduce`` carries no gradient
  and leaves each rank with only its own share (lightly ``#1977``, Barlow Twins).

Use them so that the mean over ranks of the per-rank losses is the global loss
(each rank: its own rows against everything gathered, or the same full loss on
every rank); DDP's averaging then gives the single-process gradient exactly.

Example::

    from pretrain.distributed import all_gather, rank

    z = F.normalize(z, dim=1)                       # (n, d), this rank's rows
    keys = all_gather(z)                            # (N, d), N = sum of n over ranks
    logits = z @ keys.T / tau                       # (n, N)
    labels = torch.arange(len(z)) + offset          # offset: rows of the ranks before
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_gather",
    "all_gather_sizes",
    "all_reduce",
    "broadcast",
    "is_distributed",
    "rank",
    "rank_offset",
    "world_size",
]


def is_distributed() -> bool:
    """Whether a process group is initialised (more than one process may take part)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes; 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def all_gather_sizes(n: int, device: torch.device | None = None) -> list[int]:
    """Every rank's ``n`` (e.g. its batch size), in rank order; ``[n]`` in one process."""
    if world_size() == 1:
        return [n]
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def rank_offset(n: int, device: torch.device | None = None) -> int:
    """Rows held by the ranks before this one: where this rank's rows start in a gather."""
    return sum(all_gather_sizes(n, device)[: rank()])


def _gather(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0 (ranks may hold different row counts)."""
    longest = max(sizes)
    padded = x
    if x.shape[0] < longest:  # all_gather needs equal shapes: pad, gather, trim
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        padded = torch.cat([x, pad])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


class _AllGather(torch.autograd.Function):
    """all_gather forward; backward sums the gradient over ranks and returns this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int]) -> Tensor:
        ctx.sizes = sizes
        return _gather(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every rank's loss may use every row
        start = sum(ctx.sizes[: rank()])
        return grad[start : start + ctx.sizes[rank()]], None


class _AllReduce(torch.autograd.Function):
    """all_reduce (sum) forward; backward sums the incoming gradients over ranks."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_gather(x: Tensor) -> Tensor:
    """Every rank's ``x`` concatenated along dim 0, in rank order; ``x`` itself in one process.

    Differentiable when ``x`` requires grad: the backward returns this rank its own
    slice of the gradient summed over ranks (see the module docs). Ranks may hold
    different numbers of rows; the other dimensions must agree.

    Args:
        x: (n, ...) this rank's rows.

    Returns:
        (N, ...) with N the sum of the ranks' n.

    """
    if world_size() == 1:
        return x
    sizes = all_gather_sizes(x.shape[0], x.device)
    if x.requires_grad and torch.is_grad_enabled():
        out: Tensor = _AllGather.apply(x, sizes)
        return out
    return _gather(x.detach(), sizes)


def all_reduce(x: Tensor) -> Tensor:
    """The sum of every rank's ``x`` (a new tensor; ``x`` is untouched); ``x`` in one process.

    Differentiable when ``x`` requires grad: the backward sums the incoming gradient
    over ranks, so each rank's local contribution receives the gradient of the
    global result (see the module docs).
    """
    if world_size() == 1:
        return x
    if x.requires_grad and torch.is_grad_enabled():
        out: Tensor = _AllReduce.apply(x)
        return out
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch.no_grad()
def broadcast(x: Tensor, src: int = 0) -> Tensor:
    """``x`` as held by rank ``src``, on every rank (in place; returned for chaining)."""
    if world_size() > 1:
        dist.broadcast(x, src=src)
    return x
