"""``pretrain validate SPEC``: validate, build on the meta device, run one training step, summarise."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "add_spec_arguments", "run"]


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """The SPEC + ``--set`` arguments shared by validate/train/eval."""
    p.add_argument("spec", help="spec file (.toml or .json)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value, e.g. --set model.head.num_classes=100 (VALUE is a TOML literal)",
    )


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "validate",
        help="validate a spec, build its model and run one training step on example batches",
        description=(
            "Validate a spec (every error at once, with its path), build the model on the meta "
            "device, match loss target kinds to their heads, check the model's data requirements "
            "(views, batch size) against [data], and run the training step (data.train) and the "
            "evaluation step (data.val) once on small batches made by the spec's own pipelines. "
            "An error names the spec path of the component that raised and its distribution."
        ),
    )
    add_spec_arguments(p)
    p.add_argument("--input-size", metavar="H[,W]",
                   help="input image size when the spec has no [data] table (default: the backbone's)")
    p.add_argument("--check-on", choices=("auto", "cpu", "meta"), default="auto",
                   help="where the steps run: real CPU tensors (exact, fast for small models), the meta "
                   "device (shapes only, no memory) or auto: the CPU up to 30M parameters")
    p.add_argument("--no-file-checks", action="store_true",
                   help="do not require the files the spec names (Pretrained checkpoints) to exist yet, e.g. "
                   "a fine-tuning spec whose checkpoint the pretraining run will write")
    p.add_argument("--json", action="store_true", help='print {"ok", "errors", "params", "steps", ...}')
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate a spec."""
    from pretrain.errors import SpecError, SpecIssue
    from pretrain.spec.files import load_spec
    from pretrain.spec.validate import validate_spec

    size = None
    if args.input_size:
        try:
            size = [int(v) for v in args.input_size.split(",")]
            if not 1 <= len(size) <= 2 or not all(0 < v <= 16_384 for v in size):
                raise ValueError(args.input_size)
        except ValueError:
            issue = SpecIssue("--input-size", f"expected H or H,W integers from 1 to 16384, got {args.input_size!r}")
            raise SpecError([issue]) from None
    report = None
    try:
        spec = validate_spec(load_spec(args.spec, args.overrides), source=args.spec,
                             check_files=not args.no_file_checks)
        from pretrain.engine.preflight import check_model

        report = check_model(spec, input_size=size, device=args.check_on)
        if report.issues:
            # Chained, so that --debug shows the traceback inside the component that raised.
            raise SpecError(report.issues, source=args.spec) from report.cause
    except SpecError as exc:
        if not args.json:
            raise
        from pretrain.cli._console import print_json

        errors = [i.to_json() for i in exc.issues]
        print_json({"ok": False, "errors": errors, "params": report.params if report else None})
        return 1
    from pretrain.cli._console import note_broken_plugins

    note_broken_plugins()  # on stderr: a plugin that was skipped cannot go unnoticed
    if args.json:
        from pretrain.cli._console import print_json

        print_json({"ok": True, "errors": [], "params": report.params, "trainable_params": report.trainable,
                    "input_shape": list(report.input_shape),
                    "stages": [{"loc": loc, "output": out} for loc, out in report.stages],
                    "steps": [{"split": r.split, "call": r.call, "inputs": r.inputs, "output": r.output}
                              for r in report.steps],
                    "checked_on": report.device, "notes": report.notes})
        return 0
    _print_summary(spec, report)
    return 0


def _print_summary(spec: Any, report: Any) -> None:
    from rich.markup import escape
    from rich.tree import Tree

    from pretrain.cli._console import console

    outputs = dict(report.stages)
    tree = Tree(f"[bold]{escape(spec.model.type_name)}[/] (model)")

    def add(branch: Any, node: Any) -> None:
        for name, child in node.children.items():
            for item in child if isinstance(child, list) else [child]:
                if item is None:
                    continue
                shape = f"  -> {outputs[item.loc]}" if item.loc in outputs else ""
                sub = branch.add(f"{name}: [bold]{escape(item.type_name)}[/] ({item.kind}){escape(shape)}")
                add(sub, item)

    add(tree, spec.model)
    console.print(tree)
    console.print(f"input {tuple(report.input_shape)}; parameters: {report.params:,} ({report.trainable:,} trainable)")
    for record in report.steps:
        split = "example input" if record.split == "example" else f"data.{record.split}"
        console.print(f"step ({split}, {report.device}): {escape(record.call)} on {escape(record.inputs)} "
                      f"-> {escape(record.output)}")
    for note in report.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    console.print(f"[green]ok[/]: {escape(spec.source or 'spec')} is valid")
