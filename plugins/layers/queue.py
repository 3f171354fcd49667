"""A FIFO memory queue of features (MoCo's negatives), saved in every checkpoint.

Provenance: MMPretrain's ``MoCo`` (``mmpretrain/models/selfsup/moco.py``): a
``queue`` buffer (feat_dim, queue_len) of L2-normalised random vectors at start, a
``queue_ptr`` buffer, and ``_dequeue_and_enqueue`` that writes the keys gathered
from every rank at the pointer and advances it. Both are persistent buffers, so the
run state restores them exactly on resume (lightly PR #993 fixed a queue that was
not saved). Differences: a batch that does not divide ``queue_len`` wraps around
instead of failing an ``assert`` (specs are still checked to divide it, see
:meth:`MemoryQueue.batch_issues`, so that every key stays the same number of steps).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.distributed import all_gather

__all__ = ["MemoryQueue"]


class MemoryQueue(nn.Module):
    """``queue_len`` feature vectors of width ``feat_dim``, replaced oldest first.

    Args:
        feat_dim: Width of the stored features.
        queue_len: How many features the queue holds.

    """

    queue: Tensor
    queue_ptr: Tensor

    def __init__(self, feat_dim: int, queue_len: int) -> None:
        super().__init__()
        if feat_dim <= 0 or queue_len <= 0:
            raise ValueError(f"feat_dim and queue_len must be positive, got {feat_dim} and {queue_len}")
        self.feat_dim = feat_dim
        self.queue_len = queue_len
        # (feat_dim, queue_len) as MMPretrain: random unit columns until real keys arrive.
        self.register_buffer("queue", F.normalize(torch.randn(feat_dim, queue_len), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @staticmethod
    def batch_issues(queue_len: int, global_batch: int) -> Iterable[str]:
        """Why ``global_batch`` keys per step do not suit a queue of ``queue_len`` (if they don't)."""
        if global_batch > queue_len:
            yield (f"a step enqueues {global_batch} keys (batch size x processes) but the queue holds "
                   f"only {queue_len}")
        elif queue_len % global_batch:
            yield (f"queue_len {queue_len} is not a multiple of the {global_batch} keys enqueued per step "
                   "(batch size x processes): keys would stay in the queue for different numbers of steps")

    def negatives(self) -> Tensor:
        """The stored features (feat_dim, queue_len), detached: negatives carry no gradient."""
        return self.queue.clone().detach()

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write every rank's ``keys`` (n, feat_dim) at the pointer (oldest first) and advance it."""
        keys = all_gather(keys.detach())  # (N, feat_dim), identical on every rank
        n = keys.shape[0]
        if keys.dim() != 2 or keys.shape[1] != self.feat_dim:
            raise ValueError(f"expected keys of shape (N, {self.feat_dim}), got {tuple(keys.shape)}")
        if n > self.queue_len:
            keys, n = keys[-self.queue_len :], self.queue_len  # only the newest fit
        # The pointer stays on the device: no host sync per step.
        cols = (torch.arange(n, device=self.queue.device) + self.queue_ptr) % self.queue_len  # (N,)
        self.queue[:, cols] = keys.T.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % self.queue_len)

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return f"feat_dim={self.feat_dim}, queue_len={self.queue_len}"
