"""Training-engine overhead: the engine's train step vs a hand-written PyTorch loop.

Both sides train the same spec-built model architecture (two copies with the same
initial weights) on the same batches (the spec's in-memory data loader), with the
same optimizer, precision and memory format. Blocks of ``--steps`` steps alternate
(engine, plain, engine, ...) so machine noise hits both equally; the figure is the
median over rounds of engine images/s divided by plain images/s.

The engine side is ``Trainer.train_epoch`` itself: LR schedule, autocast, loss
read-back and non-finite check, progress accounting, hook calls. The plain side is::

    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        with autocast: loss = model.loss(x, y)["loss"]
        loss.backward(); optimizer.step()

Usage::

    python bench/overhead.py                               # quickstart spec, auto device
    python bench/overhead.py --spec SPEC --steps 20 --rounds 7
    python bench/overhead.py --resnet50                    # CUDA: ResNet-50, 224 px, batch 256

On CUDA the default run also repeats the comparison with ``precision = "bf16"`` and
``channels_last`` and then measures ResNet-50 (224 px, batch 256, bf16, channels_last).
Target: ratio >= 0.97. This prints figures; it is not a timed unit test.
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "specs" / "quickstart.toml"

#: ResNet-50 (torchvision layout) on the bundled digits upsampled to 224 px, RGB.
RESNET50: dict[str, Any] = {
    "model": {
        "type": "ImageClassifier",
        "backbone": {"type": "ResNet", "depth": 50},
        "neck": {"type": "GlobalAveragePooling"},
        "head": {"type": "LinearClsHead", "num_classes": 10, "in_channels": 2048},
    },
    "data": {
        "batch_size": 256,
        "train": {"type": "Digits", "split": "all", "image_size": 224, "channels": 3,
                  "pipeline": [{"type": "RandomFlip"}]},
    },
    "train": {"epochs": 1, "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
              "precision": "bf16", "channels_last": True},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(raw: dict[str, Any], *, device: str, steps: int, rounds: int, label: str) -> float:
    """Print engine vs plain throughput for ``raw`` (a spec) and return the median ratio."""
    from rich.console import Console

    from pretrain.engine.evaluate import autocast_context
    from pretrain.engine.progress import ProgressReporter
    from pretrain.engine.trainer import Trainer
    from pretrain.spec.validate import validate_spec

    raw = copy.deepcopy(raw)
    raw["data"].pop("val", None)  # throughput only
    # Equal batch shapes: a partial last batch would trigger one-off cuDNN autotuning in
    # whichever side meets it first, which is noise, not overhead.
    raw["data"]["drop_last"] = True
    spec = validate_spec(raw)
    run_dir = tempfile.mkdtemp(prefix="pretrain-bench-")
    trainer = Trainer(spec, run_dir, device=device, live=False,
                      console=Console(file=io.StringIO()))
    trainer.setup()
    trainer.progress = ProgressReporter(trainer.console, enabled=False, epochs=1,
                                        total_steps=10**9, log_every=10**9)
    trainer.total_steps = 10**9  # never stop on max_steps inside the benchmark
    trainer._t_session, trainer._steps_session = time.perf_counter(), 0
    dev, cfg = trainer.device, trainer.cfg
    loader = trainer.loaders.train
    assert loader is not None

    # The plain loop: its own copy of the model (same initial weights) and an optimizer of
    # the same type over the same parameter groups (per-group lr / weight decay).
    model = copy.deepcopy(trainer.model).train()
    params = dict(model.named_parameters())
    groups = [{**{k: v for k, v in g.items() if k not in ("params", "names", "base_lr")},
               "params": [params[n] for n in g.get("names", list(params))]}
              for g in trainer.optimizer.param_groups]
    optimizer = type(trainer.optimizer)(groups)
    channels_last = trainer.channels_last

    state = {"epoch": 0, "batch": 0}

    def plain_block(n: int) -> int:
        images, done = 0, 0
        while done < n:
            for images_u8, y in loader.iter_from(state["epoch"], state["batch"]):
                x = images_u8
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad(set_to_none=True)
                with autocast_context(dev, cfg.precision):
                    loss = model.loss(x, y)["loss"]
                loss.backward()
                optimizer.step()
                images += len(y)
                done += 1
                state["batch"] += 1
                if done == n:
                    break
            else:
                state["epoch"], state["batch"] = state["epoch"] + 1, 0
        return images

    def engine_block(n: int) -> int:
        before, images = trainer.state.step, 0
        while trainer.state.step - before < n:
            trainer.train_epoch(trainer.state.epoch, limit=n - (trainer.state.step - before))
            images += trainer._epoch_images
            if trainer.state.step_in_epoch >= trainer.steps_per_epoch:
                trainer.state.epoch += 1
                trainer.state.step_in_epoch = 0
        return images

    def timed(block: Any) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        images = block(steps)
        _sync(dev)
        return images / (time.perf_counter() - t0)

    for _ in range(2):  # warm-up: allocator, cuDNN autotuning, compile, caches
        timed(engine_block)
        timed(plain_block)
    ratios, eng, plain = [], [], []
    for _ in range(rounds):
        e, p = timed(engine_block), timed(plain_block)
        eng.append(e)
        plain.append(p)
        ratios.append(e / p)
    ratio = statistics.median(ratios)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{label}: {type(model).__name__} {n_params / 1e6:.2f} M params, batch "
        f"{loader.batch_size}, {dev}, {cfg.precision}"
        f"{', channels_last' if channels_last else ''}, torch threads {torch.get_num_threads()}\n"
        f"  engine {statistics.median(eng):9.1f} img/s   plain {statistics.median(plain):9.1f} "
        f"img/s   ratio {ratio:.3f} (median of {rounds} interleaved rounds of {steps} steps; "
        f"per-round {min(ratios):.3f}..{max(ratios):.3f})",
        flush=True,
    )
    return ratio


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default=str(QUICKSTART), help="spec to benchmark (default: quickstart)")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=10, help="steps per block")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    p.add_argument("--resnet50", action="store_true", help="only the ResNet-50 224 px figure")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from pretrain.spec.files import load_spec

    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, "
          f"cuda {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
    raw = load_spec(args.spec)
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    if not args.resnet50:
        compare(raw, device=args.device, steps=args.steps, rounds=args.rounds,
                label=f"{Path(args.spec).name} as written")
        if cuda:
            fast = copy.deepcopy(raw)
            fast["train"].update(precision="bf16", channels_last=True)
            compare(fast, device=args.device, steps=args.steps, rounds=args.rounds,
                    label=f"{Path(args.spec).name}, bf16 + channels_last")
    if cuda or args.resnet50:
        compare(RESNET50, device=args.device, steps=args.steps, rounds=max(3, args.rounds // 2),
                label="ResNet-50 224 px batch 256, bf16 + channels_last")
    return 0


if __name__ == "__main__":
    sys.exit(main())
