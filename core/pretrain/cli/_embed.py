"""``pretrain embed SPEC --weights W --split val -o feats.safetensors``: features (+ labels) of a split."""

from __future__ import annotations

import argparse
from typing import Any

from pretrain.cli._validate import add_spec_arguments

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "embed",
        help="write a split's features (+ labels) to a safetensors file",
        description=(
            "Build the spec's model, load WEIGHTS and write the features of every image of "
            "SPLIT (model.extract_feat, one vector per image, in dataset order) with their "
            "labels to OUT. The train split goes through data.val's pipeline. The file is a "
            "gallery for retrieval and kNN: [data.gallery] embeddings = \"OUT\"."
        ),
    )
    add_spec_arguments(p)
    p.add_argument("--weights", required=True, metavar="FILE", help="weights (.safetensors) or a run directory")
    p.add_argument("--split", default="val", choices=("train", "val", "gallery"),
                   help="which [data] table to embed (default: val)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the .safetensors file to write")
    p.add_argument("--device", metavar="D", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--json", action="store_true", help="print a summary object as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Embed."""
    import os

    from pretrain.cli._console import console, err_console, note_broken_plugins, print_json
    from pretrain.engine.api import embed

    summary = embed(args.spec, args.weights, split=args.split, output=args.output, overrides=args.overrides,
                    device=args.device, console=err_console)
    note_broken_plugins()
    if os.environ.get("RANK", "0") != "0":
        return 0
    if args.json:
        print_json(summary)
    else:
        console.print(f"wrote {summary['num_images']} x {summary['dim']} features of data.{args.split} "
                      f"to {summary['output']}", highlight=False)
    return 0
