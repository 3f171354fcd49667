"""Run under torchrun: pretrain.distributed's collectives give single-process gradients under DDP.

Used by ``tests/test_distributed.py``::

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 tests/dist_collectives.py OUT

Every rank first computes the reference on the whole global batch *before* a process
group exists (the collectives are then the identity), then the same objective on its
own rows with a process group, averaging parameter gradients like DDP, and writes
``OUT/rank<r>.json`` with the largest differences.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _objectives():
    from pretrain.distributed import all_gather, all_reduce, rank_offset

    def info_nce(z: torch.Tensor) -> torch.Tensor:
        # Each rank: its own rows against every gathered row (labels offset by rank).
        z = F.normalize(z, dim=1)
        keys = all_gather(z)  # (N, d)
        logits = z @ keys.T / 0.5  # (n, N)
        offset = rank_offset(z.shape[0])
        n = keys.shape[0] // 2
        rows = torch.arange(z.shape[0]) + offset
        pos = (rows + n) % keys.shape[0]  # row i pairs with row i + N/2 (two views)
        logits = logits.masked_fill(F.one_hot(rows, keys.shape[0]).bool(), float("-inf"))
        return F.cross_entropy(logits, pos)

    def full_loss_every_rank(z: torch.Tensor) -> torch.Tensor:
        # MMPretrain's SimCLR pattern: every rank computes the loss of the whole batch.
        keys = all_gather(z)
        return (keys @ keys.T).sin().mean()

    def cross_correlation(z: torch.Tensor) -> torch.Tensor:
        # Barlow Twins pattern: a global statistic through all_reduce, same loss on every rank.
        total = all_reduce(z.T @ z)  # (d, d)
        return ((total - torch.eye(total.shape[0])) ** 2).sum() / 100.0

    return {"info_nce": info_nce, "full_loss_every_rank": full_loss_every_rank,
            "cross_correlation": cross_correlation}


def _grads(net: torch.nn.Module, loss_fn, x: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    net.zero_grad()
    loss = loss_fn(net(x))
    loss.backward()
    return float(loss), [p.grad.clone() for p in net.parameters()]


def main(out_dir: str) -> int:
    import os

    torch.manual_seed(0)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    x = torch.randn(8 * world, 6)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4))
    objectives = _objectives()
    # Reference: one process, the whole batch (no process group yet).
    reference = {name: _grads(net, fn, x) for name, fn in objectives.items()}
    dist.init_process_group("gloo")
    r, w = dist.get_rank(), dist.get_world_size()
    rows = x.shape[0] // w
    report = {}
    for name, fn in objectives.items():
        loss, grads = _grads(net, fn, x[r * rows:(r + 1) * rows])
        for g in grads:  # what DDP does: average the ranks' gradients
            dist.all_reduce(g)
            g.div_(w)
        mean_loss = torch.tensor([loss])
        dist.all_reduce(mean_loss)
        ref_loss, ref_grads = reference[name]
        report[name] = {
            "loss_diff": abs(float(mean_loss) / w - ref_loss),
            "grad_diff": max(float((g - rg).abs().max()) for g, rg in zip(grads, ref_grads, strict=True)),
            "grad_scale": float(sum(g.norm() for g in grads) / sum(g.norm() for g in ref_grads)),
        }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{r}.json").write_text(json.dumps(report))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
