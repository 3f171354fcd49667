"""``pretrain export SPEC --weights W --format onnx|torchscript|exported-program -o FILE``."""

from __future__ import annotations

import argparse
from typing import Any

from pretrain.cli._validate import add_spec_arguments

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "export",
        help="export trained weights as ONNX, TorchScript or a torch.export program",
        description=(
            "Build the spec's model, load WEIGHTS and write it for deployment. The exported graph "
            "takes uint8 images (N, C, H, W) in 0..255 with a dynamic batch size and returns the "
            "model's output (a classifier's logits); the normalisation is inside. H and W are "
            "data.image_size (else the val dataset's image size) unless --input-size says otherwise. "
            "ONNX needs pip install 'pretrain[onnx]'."
        ),
    )
    add_spec_arguments(p)
    p.add_argument("--weights", required=True, metavar="FILE", help="weights file or run directory")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript", "exported-program"),
                   help="onnx (.onnx), torchscript (.pt) or exported-program (.pt2)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write")
    p.add_argument("--input-size", metavar="H[,W]", help="input height and width (default: data.image_size)")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset version (default: the exporter's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Export."""
    from pretrain.cli._console import console, note_broken_plugins
    from pretrain.engine.api import prepare_spec
    from pretrain.engine.export import export_model, load_for_export
    from pretrain.engine.predict import input_size
    from pretrain.errors import PretrainError

    spec = prepare_spec(args.spec, args.overrides, training=False)
    note_broken_plugins()
    if args.input_size:
        try:
            hw = [int(v) for v in args.input_size.split(",")]
        except ValueError:
            raise PretrainError(f"--input-size expects H or H,W integers, got {args.input_size!r}") from None
        size = (hw[0], hw[-1])
    else:
        side = input_size(spec)
        if side is None:
            raise PretrainError("the input size is unknown: the spec has no data.image_size (nor a dataset "
                                "whose images share one size)",
                                hint="Pass --input-size H[,W] (e.g. --input-size 224).")
        size = (side, side)
    model, weights = load_for_export(spec, args.weights)
    channels = int(getattr(model, "in_channels", 3) or 3)
    out = export_model(model, args.output, fmt=args.format, channels=channels, size=size, opset=args.opset)
    console.print(f"wrote {out} ({args.format}): input uint8 (N, {channels}, {size[0]}, {size[1]}), "
                  f"batch dynamic; weights {weights}", highlight=False)
    return 0
