"""channels_last on CPU, with the oneDNN guard: still a win where it is safe, harmless where it guards.

Two copies of one spec-built model (same initial weights) train on the same
in-memory digit batches with SGD: one contiguous (NCHW), one converted by the
engine's :func:`pretrain.engine.memory_format.to_channels_last` (NHWC, except the
strided 1x1 convolutions narrower than oneDNN's vector block, which stay NCHW; see
``docs/differences.md``). Blocks of ``--steps`` steps alternate (contiguous,
channels_last, contiguous, ...), so machine noise hits both; the figure is the
median over rounds of channels_last images/s divided by contiguous images/s.

Models: the quick start (ResNet_CIFAR-18 at 1/4 width, 16 px; no layer needs the
guard), the same network at the reference width on 32 px images, and a narrow one
(width 4, 8 px) whose downsample shortcuts are all guarded.

Usage::

    python bench/channels_last.py                    # all three, 2 threads
    python bench/channels_last.py --threads 1 --rounds 9 --steps 5

This prints figures; it is not a timed unit test.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch

BACKBONE = {"type": "ResNet_CIFAR", "depth": 18, "in_channels": 1}
MODELS: dict[str, tuple[dict[str, Any], int, int]] = {
    # name: (backbone fields, image size, batch size)
    "quickstart (width 16, 16 px)": ({"stem_channels": 16, "base_channels": 16}, 16, 64),
    "ResNet_CIFAR-18 (width 64, 32 px)": ({"stem_channels": 64, "base_channels": 64}, 32, 64),
    "narrow (width 4, 8 px, guarded)": ({"stem_channels": 4, "base_channels": 4}, 8, 64),
}


def _model(backbone: dict[str, Any]) -> torch.nn.Module:
    import pretrain

    width = backbone["base_channels"] * 8  # ResNet_CIFAR-18's last stage
    spec = {"model": {
        "type": "ImageClassifier", "in_channels": 1, "mean": [127.5], "std": [127.5],
        "backbone": {**BACKBONE, **backbone}, "neck": {"type": "GlobalAveragePooling"},
        "head": {"type": "LinearClsHead", "num_classes": 10, "in_channels": width},
    }}
    return pretrain.build_model(spec, seed=0)


def _batches(size: int, batch: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from pretrain_builtins.datasets.digits import Digits

    images, labels = Digits(split="train", image_size=size).load_all()  # uint8 (N, 1, S, S)
    out = []
    for i in range(n):
        idx = torch.arange(i * batch, (i + 1) * batch) % len(images)
        out.append((images[idx], labels[idx]))
    return out


def _block(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[Any], channels_last: bool) -> float:
    images = 0
    t0 = time.perf_counter()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        model.loss(x.contiguous(memory_format=fmt), y)["loss"].backward()
        opt.step()
        images += len(y)
    return images / (time.perf_counter() - t0)


def compare(name: str, backbone: dict[str, Any], size: int, batch: int, steps: int, rounds: int) -> float:
    from pretrain.engine.memory_format import to_channels_last

    cpu = torch.device("cpu")
    plain = _model(backbone)
    fast = copy.deepcopy(plain)
    guarded = to_channels_last(fast, cpu)
    opts = {False: torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9),
            True: torch.optim.SGD(fast.parameters(), lr=0.01, momentum=0.9)}
    models = {False: plain.train(), True: fast.train()}
    batches = _batches(size, batch, steps)
    for cl in (False, True):  # warm-up: oneDNN primitive caches, allocator
        _block(models[cl], opts[cl], batches[:2], cl)
    speeds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for cl in (False, True):
            speeds[cl].append(_block(models[cl], opts[cl], batches, cl))
    ratios = [c / p for c, p in zip(speeds[True], speeds[False], strict=True)]
    ratio = statistics.median(ratios)
    print(f"{name}: contiguous {statistics.median(speeds[False]):.0f} img/s, channels_last "
          f"{statistics.median(speeds[True]):.0f} img/s, ratio {ratio:.2f} "
          f"(rounds {min(ratios):.2f}..{max(ratios):.2f}; {len(guarded)} conv(s) guarded)")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", help="substring of a model name")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU ISA {torch.backends.cpu.get_cpu_capability()}")
    for name, (backbone, size, batch) in MODELS.items():
        if args.only is None or args.only in name:
            compare(name, backbone, size, batch, args.steps, args.rounds)


if __name__ == "__main__":
    main()
