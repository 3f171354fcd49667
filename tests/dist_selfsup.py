"""Run under torchrun (or plainly): three DDP steps of every contrastive/siamese algorithm.

Used by ``tests/test_selfsup_ddp.py``::

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 tests/dist_selfsup.py OUT
    OMP_NUM_THREADS=1 python tests/dist_selfsup.py OUT

Every algorithm is built with the same seed on every rank (a LayerNorm ViT, projectors
with SyncBN so that batch statistics are global), wrapped in DDP when there is a process
group, and trained 3 SGD steps on a fixed global batch of 8 two-view samples, each rank
taking its contiguous share. After each optimizer step the trainer's hook
``after_optimizer_step`` runs. Each rank writes ``OUT/<algo>.rank<r>.safetensors``: the
loss of every step (mean over ranks), the gradients of step 1 and the final state dict
(weights, momentum teacher, queue).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

VIT: dict[str, Any] = {"type": "VisionTransformer", "img_size": 8, "patch_size": 4, "in_channels": 1,
                       "arch": {"embed_dims": 16, "num_layers": 1, "num_heads": 2, "feedforward_channels": 32}}


def neck(cin: int, out: int, **kw: Any) -> dict[str, Any]:
    return {"type": "NonLinearNeck", "in_channels": cin, "hid_channels": 16, "out_channels": out,
            "norm": "SyncBN", "with_avg_pool": False, **kw}


ALGOS: dict[str, dict[str, Any]] = {
    "SimCLR": {"neck": neck(16, 8), "head": {"type": "ContrastiveHead", "temperature": 0.1}},
    "MoCo": {"queue_len": 16, "feat_dim": 8, "momentum": 0.1,
             "neck": {"type": "MoCoV2Neck", "in_channels": 16, "hid_channels": 16, "out_channels": 8,
                      "with_avg_pool": False},
             "head": {"type": "ContrastiveHead", "temperature": 0.2}},
    "MoCoV3": {"base_momentum": 0.1, "backbone": {**VIT, "type": "MoCoV3ViT", "stop_grad_conv1": True},
               "neck": neck(16, 8, num_layers=3, with_last_bn_affine=False),
               "head": {"type": "MoCoV3Head", "temperature": 0.2,
                        "loss": {"type": "CrossEntropyLoss", "loss_weight": 0.4},
                        "predictor": neck(8, 8, with_last_bn_affine=False)}},
    "BYOL": {"base_momentum": 0.1, "neck": neck(16, 8, with_bias=True, with_last_bn=False),
             "head": {"type": "LatentPredictHead", "predictor": neck(8, 8, with_bias=True, with_last_bn=False)}},
    "SimSiam": {"neck": neck(16, 8, num_layers=3, with_last_bn_affine=False),
                "head": {"type": "LatentPredictHead",
                         "predictor": neck(8, 8, with_last_bn=False, with_last_bias=True)}},
    "BarlowTwins": {"neck": neck(16, 8, num_layers=3, with_last_bn=False),
                    "head": {"type": "LatentCrossCorrelationHead", "in_channels": 8}},
}
GLOBAL_BATCH, STEPS = 8, 3


class _Loss(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        return self.model.loss(views)["loss"]  # type: ignore[operator, no-any-return]


def run(name: str, rank: int, world: int) -> dict[str, torch.Tensor]:
    from pretrain import build_model

    spec = {"type": name, "mean": [127.5], "std": [127.5], "backbone": VIT, **ALGOS[name]}
    model = build_model({"model": spec}, seed=0)
    wrapped: nn.Module = _Loss(model)
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(wrapped)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    out: dict[str, torch.Tensor] = {}
    share = GLOBAL_BATCH // world
    for step in range(1, STEPS + 1):
        views = [torch.randint(0, 256, (GLOBAL_BATCH, 1, 8, 8), generator=g).float() for _ in range(2)]
        local = [v[rank * share:(rank + 1) * share] for v in views]
        loss = wrapped(local)
        loss.backward()
        value = loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        out[f"loss.{step}"] = value
        if step == 1:
            out.update({f"grad.{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        opt.step()
        opt.zero_grad()
        hook = getattr(model, "after_optimizer_step", None)
        if callable(hook):
            hook(step=step, total_steps=STEPS)
    out.update({f"state.{k}": v.detach().clone().float() for k, v in model.state_dict().items()})
    return out


def main(out_dir: str) -> int:
    from safetensors.torch import save_file

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for name in ALGOS:
            tensors = run(name, rank, world)
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{name}.rank{rank}.safetensors"))
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
