"""The ``pretrain`` command line (argparse + rich). ``--help`` never imports torch."""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 invalid input/failed run, 2 usage)."""
    from pretrain.cli._main import run_cli

    return run_cli(argv)
