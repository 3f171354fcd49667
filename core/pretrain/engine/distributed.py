"""Process-group setup from the ``torchrun`` environment, and the few collectives we need.

``torchrun --nproc_per_node=N`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) makes a multi-process run: NCCL on
CUDA, gloo on CPU. Without those variables everything here is a no-op, so the
single-process path pays nothing.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pretrain.errors import PretrainError

__all__ = ["DistInfo", "LossForward", "all_gather_tensors", "all_reduce_sum", "barrier", "broadcast_buffers",
           "configure_backends", "init_distributed", "resolve_device", "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the run.

    Attributes:
        rank: Global rank (0 in a single-process run).
        world_size: Number of processes.
        local_rank: Rank on this node (selects the GPU).
        device: The torch device this process trains on.
        distributed: Whether a process group is active.

    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes files."""
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise PretrainError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` into a device, checking availability."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PretrainError(
                f"device {requested!r} was requested but CUDA is not available "
                f"(torch {torch.__version__})",
                hint="Use --device cpu (or train.device = \"auto\"), or install a CUDA build of "
                "torch on a machine with an NVIDIA GPU.",
            )
        if requested == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        index = int(requested.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise PretrainError(
                f"device {requested!r} does not exist; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device("cuda", index)
    if requested == "mps":
        if not torch.backends.mps.is_available():
            raise PretrainError("device 'mps' was requested but MPS is not available")
        return torch.device("mps")
    if requested == "cpu":
        return torch.device("cpu")
    raise PretrainError(f"unknown device {requested!r}", hint="use auto, cpu, cuda, cuda:N or mps")


def init_distributed(requested_device: str) -> DistInfo:
    """Read the torchrun environment, pick the device and (if needed) init the process group.

    Args:
        requested_device: ``train.device`` or ``--device``.

    Returns:
        This process's :class:`DistInfo`.

    """
    world = _env_int("WORLD_SIZE") or 1
    local_rank = _env_int("LOCAL_RANK") or 0
    device = resolve_device(requested_device, local_rank)
    if world == 1:
        return DistInfo(0, 1, 0, device, False)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend, timeout=datetime.timedelta(minutes=30),
            device_id=device if device.type == "cuda" else None,
        )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, True)


def shutdown() -> None:
    """Destroy the process group (if one was created)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.distributed:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks in place and return it (identity in a single process)."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if info.distributed:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def all_gather_tensors(
    tensors: Mapping[str, torch.Tensor], info: DistInfo
) -> list[dict[str, torch.Tensor]]:
    """Gather same-shaped tensors from every rank (CPU results, one dict per rank).

    Used for per-rank RNG states, whose shapes are equal across ranks.
    """
    if not info.distributed:
        return [{k: v.cpu() for k, v in tensors.items()}]
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(info.world_size)]
    for key in sorted(tensors):
        local = tensors[key].to(info.device)
        parts = [torch.empty_like(local) for _ in range(info.world_size)]
        dist.all_gather(parts, local)
        for r, part in enumerate(parts):
            out[r][key] = part.cpu()
    return out


def configure_backends(device: torch.device, *, cpu_threads: int | None, deterministic: bool) -> None:
    """Thread count, determinism and CUDA kernel choices for a run on ``device``."""
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 matmuls/convs for fp32 runs


class LossForward(torch.nn.Module):
    """Routes ``forward`` to ``model.loss`` so DDP's gradient hooks (and torch.compile) see the call."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Any, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """``model.loss(inputs, targets)``."""
        return self.model.loss(inputs, targets)  # type: ignore[operator, no-any-return]
