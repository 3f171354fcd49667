"""Backbone throughput: our modules next to torchvision's / timm's own, side by side.

For each family the reference model (torchvision or timm, random weights) and ours
(backbone [+ neck] + head built from the registered components) get the *same*
weights (through our weight converter) and the same input; each training step is
forward + cross-entropy + backward (train mode, so BatchNorm, stochastic depth and
dropout are active on both sides). Blocks of ``--steps`` steps alternate (theirs,
ours, ours, theirs, ...) so machine noise hits both equally. The figure is ours/theirs
images per second measured in CPU time of the (single) compute thread, medians over the
rounds, which descheduling on a shared machine does not inflate; the wall-clock ratio is
printed beside it. Target: ratio >= 0.97.

Usage::

    python bench/backbones.py                        # every family, CPU, tiny batches
    python bench/backbones.py --only convnext,deit3 --rounds 7 --steps 3

This prints figures; it is not a timed unit test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Case:
    """One family: how to build theirs, our spec tables, and the converter's arch name."""

    name: str
    source: str
    arch: str
    make: Callable[[], nn.Module]
    head: dict[str, Any]
    pool: bool
    size: int
    backbone: dict[str, Any] | None = None  # default: the converter's backbone table


def _tv(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(**kwargs)

    return make


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import timm

        return timm.create_model(name, **kwargs)

    return make


def _linear(channels: int) -> dict[str, Any]:
    return {"type": "LinearClsHead", "num_classes": 1000, "in_channels": channels}


CASES = [
    Case("convnext", "torchvision", "convnext_tiny", _tv("convnext_tiny", stochastic_depth_prob=0.1),
         _linear(768), False, 128, {"type": "ConvNeXt", "arch": "tiny", "drop_path_rate": 0.1}),
    Case("efficientnet", "torchvision", "efficientnet_b0", _tv("efficientnet_b0"), _linear(1280), True, 128,
         {"type": "EfficientNet", "arch": "b0", "conv_cfg": {"type": "Conv2d"},
          "norm_cfg": {"type": "BN", "eps": 1e-5}, "drop_path_rate": 0.2}),
    Case("efficientnet_v2", "torchvision", "efficientnet_v2_s", _tv("efficientnet_v2_s"), _linear(1280), True, 128,
         {"type": "EfficientNetV2", "arch": "s", "conv_cfg": {"type": "Conv2d"}, "drop_path_rate": 0.2}),
    Case("regnet", "torchvision", "regnet_x_400mf", _tv("regnet_x_400mf"), _linear(400), True, 128),
    Case("resnext", "torchvision", "resnext50_32x4d", _tv("resnext50_32x4d"), _linear(2048), True, 128),
    Case("seresnet", "timm", "seresnet50", _timm("seresnet50"), _linear(2048), True, 128),
    Case("mobilenet_v3", "torchvision", "mobilenet_v3_large", _tv("mobilenet_v3_large"),
         {"type": "StackedLinearClsHead", "num_classes": 1000, "in_channels": 960, "mid_channels": [1280],
          "dropout_rate": 0.2, "act": "HSwish"}, True, 128),
    Case("deit", "timm", "deit_tiny_distilled_patch16_224", _timm("deit_tiny_distilled_patch16_224"),
         {"type": "DeiTClsHead", "num_classes": 1000, "in_channels": 192}, False, 224),
    Case("deit3", "timm", "deit3_small_patch16_224", _timm("deit3_small_patch16_224"),
         {"type": "VisionTransformerClsHead", "num_classes": 1000, "in_channels": 384}, False, 224),
]


class Ours(nn.Module):
    """backbone -> [GAP] -> head, our registered components."""

    def __init__(self, backbone: dict[str, Any], head: dict[str, Any], pool: bool) -> None:
        super().__init__()
        from pretrain.assembly.assemble import build_from_spec

        self.backbone = build_from_spec("backbone", backbone)
        self.neck = build_from_spec("neck", {"type": "GlobalAveragePooling"}) if pool else None
        self.head = build_from_spec("head", head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        return self.head(self.neck(feats) if self.neck is not None else feats)


class TimmWrapped(nn.Module):
    """``TIMMBackbone`` + GAP + head vs the plain timm model (the wrapper's overhead)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        from pretrain.assembly.assemble import build_from_spec

        self.backbone = build_from_spec("backbone", {"type": "TIMMBackbone", "model_name": name})
        channels = self.backbone.out_channels[0]
        self.neck = build_from_spec("neck", {"type": "GlobalAveragePooling"})
        self.head = build_from_spec("head", _linear(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.backbone(x)))


def build_pair(case: Case) -> tuple[nn.Module, nn.Module]:
    """Theirs and ours with identical weights."""
    from pretrain.cli._convert import find_converter

    torch.manual_seed(0)
    theirs = case.make()
    _, converter = find_converter(case.source, case.arch)
    spec = case.backbone or converter.backbone_spec(case.source, case.arch)
    ours = Ours(dict(spec), case.head, case.pool)
    ours.load_state_dict(converter.convert(theirs.state_dict(), source=case.source, arch=case.arch))
    return theirs, ours


def timm_wrapper_pair(name: str = "resnet18") -> tuple[nn.Module, nn.Module]:
    import timm

    torch.manual_seed(0)
    theirs = timm.create_model(name)
    ours = TimmWrapped(name)
    state = {f"backbone.timm_model.{k}": v for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    state.update({"head.fc.weight": theirs.fc.weight, "head.fc.bias": theirs.fc.bias})
    ours.load_state_dict(state)
    return theirs, ours


def step_block(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds (of this thread) for ``steps`` forward+backward steps."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    return time.perf_counter() - wall, time.thread_time() - cpu


def compare(name: str, theirs: nn.Module, ours: nn.Module, *, batch: int, size: int, steps: int,
            rounds: int) -> tuple[float, float]:
    """Print both models' images per second; return the ratios ours/theirs (CPU time, wall clock).

    With one torch thread every op runs on the calling thread, so its CPU time counts the
    work of the step and not the time the process spends descheduled: on a shared machine
    it is the stable figure. The wall-clock ratio (median over rounds) is printed too.
    """
    theirs.train()
    ours.train()
    torch.manual_seed(1)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    step_block(theirs, x, y, 1)  # warm-up (allocator, kernel selection)
    step_block(ours, x, y, 1)
    wall_ratios: list[float] = []
    cpu: dict[str, list[float]] = {"theirs": [], "ours": []}
    for i in range(rounds):
        # Alternate which side goes first, so neither always follows the other's allocations.
        order = (("ours", ours), ("theirs", theirs)) if i % 2 else (("theirs", theirs), ("ours", ours))
        walls = {}
        for side, model in order:
            walls[side], seconds = step_block(model, x, y, steps)
            cpu[side].append(seconds)
        wall_ratios.append(walls["theirs"] / walls["ours"])  # (ours img/s) / (theirs img/s)
    t_theirs, t_ours = statistics.median(cpu["theirs"]), statistics.median(cpu["ours"])
    cpu_ratio, wall_ratio = t_theirs / t_ours, statistics.median(wall_ratios)
    print(f"{name:<16} {size:>4} px  theirs {batch * steps / t_theirs:7.1f} img/s  ours "
          f"{batch * steps / t_ours:7.1f} img/s (per CPU second)  ratio {cpu_ratio:.3f}  "
          f"(wall clock: {wall_ratio:.3f})", flush=True)
    return cpu_ratio, wall_ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated families (default: all, plus timm_wrapper)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1, help="steps per block")
    parser.add_argument("--rounds", type=int, default=15, help="alternating blocks per side")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; with more than 1 the CPU-time figure also counts "
                        "worker threads poorly, read the wall-clock ratio")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    wanted = set(args.only.split(",")) if args.only else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch}, "
          f"{args.steps} steps x {args.rounds} rounds per side (forward + backward, train mode)")
    results: dict[str, tuple[float, float]] = {}
    for case in CASES:
        if wanted is None or case.name in wanted:
            theirs, ours = build_pair(case)
            results[case.name] = compare(case.name, theirs, ours, batch=args.batch, size=case.size,
                                         steps=args.steps, rounds=args.rounds)
    if wanted is None or "timm_wrapper" in wanted:
        theirs, ours = timm_wrapper_pair()
        results["timm_wrapper"] = compare("timm_wrapper", theirs, ours, batch=args.batch, size=128,
                                          steps=args.steps, rounds=args.rounds)
    below = [k for k, (cpu_ratio, _) in results.items() if cpu_ratio < 0.97]
    print("all ratios >= 0.97" if not below else f"ratio below 0.97: {', '.join(below)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
