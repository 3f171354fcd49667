"""Run the CLI in-process and check that an error is one clear paragraph (shared by the reliability tests)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from pretrain.cli import main


@dataclass
class Result:
    """Exit code and output of one in-process CLI run (whitespace-flattened ``flat``)."""

    code: int
    out: str
    err: str

    @property
    def flat(self) -> str:
        return " ".join((self.out + " " + self.err).split())


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    """``pretrain ARGS`` in this process (fast: torch and the registry stay loaded)."""
    from pretrain.cli._console import console, err_console

    widths = console.width, err_console.width
    console.width = err_console.width = 4000  # no line folding inside paths
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    finally:
        console.width, err_console.width = widths
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def assert_clear_error(res: Result, *named: str, code: int = 1) -> None:
    """Exit ``code``, no traceback, no "please report it", and every string of ``named`` in the message."""
    assert res.code == code, f"exit {res.code}, expected {code}:\n{res.err}{res.out}"
    assert "Traceback" not in res.err, res.err
    assert "please report it" not in res.flat, res.err
    assert "\nerror:" in "\n" + res.err or code == 2, res.err  # a run's progress lines may come first
    for text in named:
        assert " ".join(text.split()) in res.flat, f"{text!r} not in: {res.flat}"


def snapshot(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path`` (to prove nothing was touched)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}
