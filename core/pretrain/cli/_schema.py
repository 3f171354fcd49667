"""``pretrain schema``: JSON Schema of the spec format with every installed component."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "schema",
        help="export the JSON Schema of the spec format (for editor completion)",
        description="Export the JSON Schema of the whole spec format, with every installed component.",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print or write the schema."""
    from pretrain.registry.plugins import load_plugins
    from pretrain.spec.jsonschema import spec_json_schema

    load_plugins()
    schema = spec_json_schema()
    text = json.dumps(schema, indent=2, default=str) + "\n"
    if args.output:
        from pretrain.errors import PretrainError

        out = Path(args.output)
        try:
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(out)
        except OSError as exc:
            raise PretrainError(f"cannot write the schema to {out}: {exc.strerror}") from None
        from pretrain.cli._console import console

        console.print(f"wrote {out} ({len(schema['$defs'])} definitions)")
    else:
        import sys

        sys.stdout.write(text)
    return 0
