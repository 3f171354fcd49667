"""``pretrain eval SPEC --weights FILE``: top-k and per-class accuracy on the spec's ``data.val``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pretrain.cli._validate import add_spec_arguments

__all__ = ["add_parser", "evaluate_weights", "run"]


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "eval",
        help="score weights on the spec's validation data (top-k, per class)",
        description=(
            "Build the spec's model, load WEIGHTS (a .safetensors file written by `pretrain "
            "train`, or a run directory: its best, else last, weights) and report top-k accuracy "
            "in percent on [data.val], with a per-class table. Uses the spec's train.precision "
            "and channels_last, so it reproduces the training-time validation exactly."
        ),
    )
    add_spec_arguments(p)
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="weights (.safetensors) or a run directory")
    p.add_argument("--device", metavar="D", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--json", action="store_true", help="print the metrics object as JSON")
    p.set_defaults(run=run)


def _weights_file(path: Path) -> Path:
    from pretrain.errors import PretrainError

    if path.is_dir():
        for candidate in ("checkpoints/best.safetensors", "checkpoints/last.safetensors",
                          "best.safetensors", "last.safetensors"):
            if (path / candidate).is_file():
                return path / candidate
        raise PretrainError(f"{path} is a directory without checkpoints/best.safetensors or "
                            "last.safetensors", hint="Pass the .safetensors file itself.")
    return path


def evaluate_weights(spec: Any, weights: Path, device: str | None = None) -> dict[str, Any]:
    """Score ``weights`` with ``spec``'s model on its ``data.val`` (single process or torchrun).

    Returns:
        ``accuracy/top{k}`` (percent), ``num_samples``, ``per_class`` (with class names).

    """
    from pretrain.assembly.assemble import build_node
    from pretrain.engine import checkpoint as ckpt
    from pretrain.engine.data import build_loaders
    from pretrain.engine.distributed import init_distributed
    from pretrain.engine.memory_format import to_channels_last
    from pretrain.engine.trainer import evaluate_loss, evaluate_model, load_weights, model_num_classes
    from pretrain.errors import PretrainError
    from pretrain.spec.sections import EvalSection

    data = spec.sections.get("data")
    if data is None or data.val is None:
        raise PretrainError("the spec has no [data.val] table, so there is nothing to evaluate on",
                            hint="Add [data.val] (e.g. type = \"Digits\", split = \"val\").")
    train = spec.sections.get("train")
    eval_cfg = spec.sections.get("eval") or EvalSection()
    info = init_distributed(device or (train.device if train is not None else "auto"))
    model = build_node(spec.model, init=False).to(info.device)
    tensors, _ = ckpt.load_tensors(weights)
    load_weights(model, tensors, weights)
    channels_last = bool(train is not None and train.channels_last and info.device.type != "mps")
    if channels_last:
        to_channels_last(model, info.device)
    num_classes = model_num_classes(model)
    loaders = build_loaders(
        data, device=info.device, distributed=info.distributed, rank=info.rank,
        world_size=info.world_size, seed=train.seed if train is not None else 0,
        num_classes=num_classes, in_channels=getattr(model, "in_channels", None), splits=("val",),
    )
    if num_classes is None:  # self-supervised: the validation loss (e.g. MAE reconstruction)
        metrics = evaluate_loss(
            model, loaders.val, device=info.device, precision=train.precision if train is not None else "fp32",
            channels_last=channels_last, dist_info=info,
        )
        metrics["weights"] = str(weights)
        return metrics
    metrics = evaluate_model(
        model, loaders.val, topk=eval_cfg.topk, num_classes=num_classes, device=info.device,
        precision=train.precision if train is not None else "fp32",
        channels_last=channels_last, dist_info=info,
    )
    for row in metrics["per_class"]:
        c = row["class"]
        row["class"] = loaders.classes[c] if c < len(loaders.classes) else str(c)
    metrics["weights"] = str(weights)
    return metrics


def run(args: argparse.Namespace) -> int:
    """Evaluate."""
    from pretrain.cli._console import console, print_json
    from pretrain.spec.files import load_spec
    from pretrain.spec.validate import validate_spec

    spec = validate_spec(load_spec(args.spec, args.overrides), source=args.spec)
    weights = _weights_file(Path(args.weights))
    from pretrain.engine.distributed import shutdown

    try:
        metrics = evaluate_weights(spec, weights, args.device)
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() != 0:
            return 0
    finally:
        shutdown()
    if args.json:
        print_json(metrics)
        return 0
    _print_table(console, metrics)
    return 0


def _print_table(console: Any, metrics: dict[str, Any]) -> None:
    if "val_loss" in metrics:
        console.print(f"{metrics['weights']}: val_loss {metrics['val_loss']:.4f} on {metrics['num_samples']} images")
        return
    from rich.table import Table

    table = Table(title=f"per-class accuracy ({metrics['num_samples']} images)")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("top-1 %", justify="right")
    for row in metrics["per_class"]:
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.2f}"
        table.add_row(str(row["class"]), str(row["count"]), acc)
    console.print(table)
    tops = "  ".join(f"{k} [bold]{v:.2f}[/] %" for k, v in metrics.items()
                     if k.startswith("accuracy/"))
    console.print(f"{metrics['weights']}: {tops}")
