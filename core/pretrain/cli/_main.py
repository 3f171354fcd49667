"""Argument parsing and dispatch. Command modules are torch-free at import time."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Final

from pretrain import __version__
from pretrain.errors import PretrainError

__all__ = ["COMMANDS", "build_parser", "run_cli", "unexpected_error"]

#: Subcommand modules, in help order. Each has ``add_parser(subparsers)`` and ``run(args)``.
COMMANDS: Final[tuple[str, ...]] = (
    "pretrain.cli._list",
    "pretrain.cli._describe",
    "pretrain.cli._validate",
    "pretrain.cli._schema",
    "pretrain.cli._plugins",
    "pretrain.cli._train",
    "pretrain.cli._eval",
    "pretrain.cli._embed",
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
    parser.add_argument(
        "--max-params",
        metavar="N",
        help="largest model (parameters) validate/train/eval accept, e.g. 50e9 or 50B "
        "(default 20B; PRETRAIN_MAX_PARAMS=N)",
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
    if args.max_params is not None:
        os.environ["PRETRAIN_MAX_PARAMS"] = args.max_params  # parsed (and checked) where it is used
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        from pretrain.cli._plugins import strict_check

        strict_check()  # strict mode: any broken installed plugin fails every command
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
        from pretrain.assembly.blame import unexpected_error
        from pretrain.cli._console import print_error

        # "please report it" only when pretrain's own code raised; a plugin's fault names the plugin.
        print_error(unexpected_error(exc, f"`pretrain {args.command}`"))
        return 1


def unexpected_error(exc: BaseException, command: str | None) -> PretrainError:
    """A user-facing error for an exception no code path turned into a ``PretrainError``.

    An ``OSError`` is about the user's files or machine (it names the file); an
    exception raised inside an installed plugin's code names that plugin, so the
    report goes to its authors. Only what remains is a bug in pretrain itself.
    """
    where = f"`pretrain {command}`" if command else "pretrain"
    if isinstance(exc, OSError):
        target = f" {exc.filename}" if exc.filename else ""
        return PretrainError(
            f"{where} cannot access{target}: {exc.strerror or exc}",
            hint="Check that the path exists, that you may read (or write) it, and that its disk has space.",
        )
    if isinstance(exc, MemoryError):
        return PretrainError(
            f"{where} ran out of memory",
            hint="Lower data.batch_size (or the model's size), or use a machine with more memory.",
        )
    plugin = _plugin_in_traceback(exc)
    if plugin is not None:
        return PretrainError(
            f"{type(exc).__name__} raised inside {plugin} during {where}: {exc}",
            hint="This is a bug in that plugin (or a value it cannot handle): report it to its authors, "
            "or run without it (--no-plugins). Run again with --debug for the traceback.",
        )
    return PretrainError(
        f"unexpected {type(exc).__name__} in {where}: {exc}",
        hint="Run again with --debug for the traceback, and please report it.",
    )


def _plugin_in_traceback(exc: BaseException) -> str | None:
    """``"plugin module M (distribution D V)"`` for the innermost frame of third-party component code."""
    try:
        from pretrain.registry.registry import get_registry

        registry = get_registry()
        owners = {
            record.module.partition(".")[0]: record
            for record in [*registry.entries(), *registry.plugin_entry_points()]
            if record.distribution != "pretrain" and record.source == "entry-point"
        }
    except Exception:  # the registry itself is broken: no attribution
        return None
    found = None
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        record = owners.get(module.partition(".")[0])
        if record is not None:
            found = f"plugin module {module} (distribution {record.distribution} {record.version})"
        tb = tb.tb_next
    return found
