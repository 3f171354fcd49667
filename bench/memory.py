"""Peak memory per process of MAE pretraining: ViT-B/L, batch sizes, activation checkpointing, DDP vs FSDP.

Trains a few steps of MAE (ViT-B/16 or ViT-L/16 encoder, the paper's 8-layer 512-wide
decoder, mask ratio 0.75, 224 px RGB, bf16, AdamW) on the bundled digits upsampled to
224 px, and prints ``torch.cuda.max_memory_allocated()`` per process after the steps.
Needs CUDA; under ``torchrun`` every rank reports its own peak, with
``--strategy fsdp`` sharding weights, gradients and AdamW state.

Usage::

    python bench/memory.py                                   # ViT-B and ViT-L, batch 32/64/128, with_cp off/on
    python bench/memory.py --arch l --batch 64 --with-cp
    torchrun --nproc_per_node=2 bench/memory.py --arch l --batch 64 --strategy fsdp
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def mae_spec(arch: str, batch: int, with_cp: bool, strategy: str) -> dict[str, Any]:
    """An MAE spec at 224 px on the digits (RGB, upsampled)."""
    embed = {"b": 768, "l": 1024}[arch]
    return {
        "model": {
            "type": "MAE",
            "backbone": {"type": "MAEViT", "arch": arch, "img_size": 224, "patch_size": 16, "mask_ratio": 0.75,
                         "with_cp": with_cp},
            "neck": {"type": "MAEPretrainDecoder", "num_patches": 196, "patch_size": 16, "in_chans": 3,
                     "embed_dim": embed, "decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16},
            "head": {"type": "MAEPretrainHead", "patch_size": 16, "in_channels": 3, "norm_pix": True,
                     "loss": {"type": "PixelReconstructionLoss", "criterion": "L2"}},
        },
        "data": {"batch_size": batch, "train": {"type": "Digits", "split": "all", "image_size": 224, "channels": 3}},
        "train": {"epochs": 1, "precision": "bf16", "strategy": strategy,
                  "optimizer": {"type": "AdamW", "lr": 1.5e-4, "betas": [0.9, 0.95], "weight_decay": 0.05}},
    }


def peak(arch: str, batch: int, with_cp: bool, strategy: str, steps: int) -> tuple[float, int]:
    """Peak GiB allocated on this process's GPU over ``steps`` steps, and the parameter count."""
    from pretrain.engine.trainer import Trainer
    from pretrain.spec.validate import validate_spec

    spec = validate_spec(mae_spec(arch, batch, with_cp, strategy))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(spec, Path(tmp) / "run", live=False)
        trainer.setup()
        try:
            from pretrain.engine.progress import ProgressReporter

            trainer.progress = ProgressReporter(trainer.console, enabled=False, epochs=1, total_steps=steps,
                                                log_every=10**9)
            torch.cuda.reset_peak_memory_stats()
            trainer.train_epoch(0, limit=steps)
            torch.cuda.synchronize()
            params = sum(p.numel() for p in trainer.model.parameters())
            return torch.cuda.max_memory_allocated() / 2**30, params
        finally:
            trainer.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=("b", "l"), action="append")
    p.add_argument("--batch", type=int, action="append")
    p.add_argument("--with-cp", action="store_true", help="only with activation checkpointing")
    p.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/memory.py needs a CUDA device; none here (nothing measured)")
        return 0
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    cps = [True] if args.with_cp else [False, True]
    for arch in args.arch or ["b", "l"]:
        for batch in args.batch or [32, 64, 128]:
            for cp in cps:
                try:
                    gib, params = peak(arch, batch, cp, args.strategy, args.steps)
                    text = f"{gib:6.2f} GiB"
                except torch.OutOfMemoryError:
                    text, params = "   OOM", 0
                    torch.cuda.empty_cache()
                print(f"rank {rank}/{world} {args.strategy} MAE ViT-{arch.upper()}/16 ({params / 1e6:.0f} M params) "
                      f"batch {batch}/process with_cp={cp}: peak {text}", flush=True)
    from pretrain.engine.distributed import shutdown

    shutdown()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "core"))
    sys.exit(main())
