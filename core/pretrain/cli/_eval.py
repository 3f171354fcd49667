"""``pretrain eval SPEC --weights FILE``: the spec's evaluation on ``data.val`` (classes, retrieval, kNN, loss)."""

from __future__ import annotations

import argparse
from typing import Any

from pretrain.cli._validate import add_spec_arguments

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "eval",
        help="score weights on the spec's validation data (classification, retrieval, kNN)",
        description=(
            "Build the spec's model, load WEIGHTS (a .safetensors file written by `pretrain "
            "train`, or a run directory: its best, else last, weights) and score it on [data.val]: "
            "classifiers report top-k accuracy, precision/recall/F1 (per class and averaged) and a "
            "confusion matrix; retrievers rank [data.gallery] and report Recall@K and mAP@K; "
            "[eval] knn adds weighted kNN accuracy. Weights of components the model lacks (a "
            "classifier's head, evaluated as a retriever) are ignored with a note. Uses the spec's "
            "train.precision and channels_last, so it reproduces the training-time validation exactly."
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

    from pretrain.cli._console import console, err_console, note_broken_plugins, print_json
    from pretrain.engine.api import evaluate

    metrics = evaluate(args.spec, args.weights, overrides=args.overrides, device=args.device,
                       console=err_console)
    note_broken_plugins()
    if os.environ.get("RANK", "0") != "0":
        return 0
    if args.json:
        print_json(metrics)
        return 0
    _print_table(console, metrics)
    return 0


def _print_table(console: Any, metrics: dict[str, Any]) -> None:
    from rich.table import Table

    if "val_loss" in metrics:
        console.print(f"{metrics['weights']}: val_loss {metrics['val_loss']:.4f} on {metrics['num_samples']} images")
    rows = metrics.get("per_class")
    if rows:
        columns = [c for c in ("count", "accuracy", "precision", "recall", "f1-score") if c in rows[0]]
        table = Table(title=f"per-class accuracy, precision, recall, F1 ({metrics['num_samples']} images, %)")
        table.add_column("class")
        for column in columns:
            table.add_column("images" if column == "count" else column, justify="right")
        for row in rows:
            cells = [str(row[c]) if c == "count" else ("-" if row[c] is None else f"{row[c]:.2f}") for c in columns]
            table.add_row(str(row["class"]), *cells)
        console.print(table)
    if "num_queries" in metrics:
        console.print(f"{metrics['num_queries']} queries ranked against {metrics['gallery_size']} gallery items")
    scalars = "  ".join(f"{k} [bold]{v:.2f}[/] %" for k, v in metrics.items()
                        if "/" in k and isinstance(v, int | float))
    if scalars:
        console.print(f"{metrics['weights']}: {scalars}")
