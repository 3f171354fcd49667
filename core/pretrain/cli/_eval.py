"""``pretrain eval SPEC --weights FILE``: top-k and per-class accuracy on the spec's ``data.val``."""

from __future__ import annotations

import argparse
from typing import Any

from pretrain.cli._validate import add_spec_arguments

__all__ = ["add_parser", "run"]


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


def run(args: argparse.Namespace) -> int:
    """Evaluate."""
    import os

    from pretrain.cli._console import console, note_broken_plugins, print_json
    from pretrain.engine.api import evaluate

    metrics = evaluate(args.spec, args.weights, overrides=args.overrides, device=args.device)
    note_broken_plugins()
    if os.environ.get("RANK", "0") != "0":
        return 0
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
