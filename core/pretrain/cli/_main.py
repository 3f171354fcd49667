"""Argument parsing and dispatch. Command modules are torch-free at import time."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Final

from pretrain import __version__
from pretrain.errors import PretrainError

__all__ = ["COMMANDS", "build_parser", "run_cli"]

#: Subcommand modules, in help order. Each has ``add_parser(subparsers)`` and ``run(args)``.
COMMANDS: Final[tuple[str, ...]] = (
    "pretrain.cli._list",
    "pretrain.cli._describe",
    "pretrain.cli._validate",
    "pretrain.cli._schema",
    "pretrain.cli._plugins",
    "pretrain.cli._train",
    "pretrain.cli._eval",
    "pretrain.cli._predict",
    "pretrain.cli._export",
    "pretrain.cli._shard",
    "pretrain.cli._reconstruct",
    "pretrain.cli._convert",
    "pretrain.cli._new_plugin",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="pretrain",
        description=(
            "Build, pretrain and fine-tune vision models from components. Components come "
            "from installed packages (entry points); specs are TOML or JSON."
        ),
    )
    parser.add_argument("--version", action="version", version=f"pretrain {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--strict-plugins",
        action="store_true",
        help="fail on the first broken plugin instead of reporting it (PRETRAIN_STRICT_PLUGINS=1)",
    )
    parser.add_argument(
        "--no-plugins",
        action="store_true",
        help="ignore third-party plugins; built-ins only (PRETRAIN_DISABLE_PLUGIN_AUTOLOAD=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command not part of this build
                continue
            raise
        module.add_parser(sub)
    return parser


def run_cli(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; map errors to exit codes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.strict_plugins:
        os.environ["PRETRAIN_STRICT_PLUGINS"] = "1"
    if args.no_plugins:
        os.environ["PRETRAIN_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        return int(run(args) or 0)
    except PretrainError as exc:
        if args.debug:
            raise
        from pretrain.cli._console import print_error

        print_error(exc)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        from pretrain.cli._console import print_error

        print_error(
            PretrainError(
                f"unexpected {type(exc).__name__} in `pretrain {args.command}`: {exc}",
                hint="Run again with --debug for the traceback, and please report it.",
            )
        )
        return 1
