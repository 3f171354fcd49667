"""``pretrain predict SPEC --weights W IMAGES...|FOLDER``: top-k classes and scores per image."""

from __future__ import annotations

import argparse
from typing import Any

from pretrain.cli._validate import add_spec_arguments

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "predict",
        help="classify image files with trained weights (top-k classes and scores)",
        description=(
            "Build the spec's model, load WEIGHTS (a .safetensors file, a sharded *.index.json, or a "
            "run directory: its best, else last, weights) and print the top-k classes with their "
            "softmax scores for every image: files and folders (searched recursively) of any format "
            "Pillow reads. Images go through the spec's data.val pipeline and are resized/centre-cropped "
            "to data.image_size. Class names come from the run directory's classes.json."
        ),
    )
    add_spec_arguments(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files and/or folders of images")
    p.add_argument("--weights", required=True, metavar="FILE", help="weights file or run directory")
    p.add_argument("--topk", type=int, default=1, metavar="K", help="classes per image (default: 1)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass (default: 64)")
    p.add_argument("--device", metavar="D", help="auto, cpu, cuda or cuda:N (default: the spec's train.device)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print a JSON list (one object per image)")
    out.add_argument("--csv", action="store_true", help="print CSV: path, then label/class/score per rank")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Predict."""
    import csv
    import sys

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pretrain.cli._console import console, err_console, note_broken_plugins, print_json
    from pretrain.engine.api import prepare_spec
    from pretrain.engine.predict import Predictor, collect_images
    from pretrain.errors import PretrainError

    if args.topk < 1:
        raise PretrainError(f"--topk must be at least 1, got {args.topk}")
    if args.batch_size < 1:
        raise PretrainError(f"--batch-size must be at least 1, got {args.batch_size}")
    paths = collect_images(args.images)
    spec = prepare_spec(args.spec, args.overrides, training=False)
    note_broken_plugins()
    predictor = Predictor(spec, args.weights, device=args.device)
    if args.topk > predictor.num_classes:
        raise PretrainError(f"--topk {args.topk} is more than the model's {predictor.num_classes} classes",
                            hint=f"Use --topk {predictor.num_classes} or less.")
    progress = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err_console, transient=True, disable=len(paths) <= 2 * args.batch_size)
    with progress:
        task = progress.add_task("predict", total=len(paths))
        rows = list(predictor.predict(paths, topk=args.topk, batch_size=args.batch_size,
                                      on_batch=lambda n: progress.advance(task, n)))
    if args.json:
        print_json([r.as_dict() for r in rows])
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        header = ["path"]
        for k in range(1, args.topk + 1):
            header += [f"label_{k}", f"class_{k}", f"score_{k}"]
        writer.writerow(header)
        for r in rows:
            cells: list[Any] = [r.path]
            for lb, c, s in zip(r.labels, r.classes, r.scores, strict=True):
                cells += [lb, c, f"{s:.6g}"]
            writer.writerow(cells)
    else:
        from rich.table import Table

        table = Table(title=f"{len(rows)} images, weights {predictor.weights}")
        table.add_column("image", overflow="fold")
        for k in range(1, min(args.topk, predictor.num_classes) + 1):
            table.add_column(f"top-{k}" if args.topk > 1 else "class")
        for r in rows:
            table.add_row(r.path, *(f"{c} ({s:.3f})" for c, s in zip(r.classes, r.scores, strict=True)))
        console.print(table)
    return 0
