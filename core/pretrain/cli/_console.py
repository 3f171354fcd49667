"""Shared rich consoles and error rendering for CLI commands."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

__all__ = ["console", "err_console", "note_broken_plugins", "print_error", "print_json"]

#: Human output (tables, summaries) goes to stdout.
console = Console(highlight=False, soft_wrap=False)
#: Errors, warnings and progress go to stderr, so `--json` stdout stays machine-readable.
err_console = Console(stderr=True, highlight=False)


def print_json(payload: Any) -> None:
    """Write ``payload`` as JSON to stdout (plain, no colour codes)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_error(exc: BaseException) -> None:
    """Print a PretrainError (or anything) as a short red paragraph on stderr."""
    from pretrain.errors import PretrainError, SpecError

    if isinstance(exc, SpecError):
        where = f" in {exc.source}" if exc.source else ""
        n = len(exc.issues)
        plural = "s" if n != 1 else ""
        err_console.print(f"[bold red]error:[/] the spec{escape(where)} is invalid ({n} problem{plural}):")
        for issue in exc.issues:
            loc = f"[bold]{escape(issue.loc)}[/]: " if issue.loc else ""
            err_console.print(f"  {loc}{escape(issue.msg)}")
        return
    message = exc.message if isinstance(exc, PretrainError) else str(exc)
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    hint = getattr(exc, "hint", None)
    if hint:
        err_console.print(f"[dim]hint:[/] {escape(hint)}")


def note_broken_plugins() -> None:
    """One line on stderr per plugin that failed to load in this process (and was skipped)."""
    from pretrain.registry.registry import get_registry

    for failure in get_registry().failures():
        err_console.print(f"[yellow]note:[/] skipped a broken plugin: {escape(failure.describe())}")
