"""Developer sessions: tests, lint, typecheck, bench, demo.

``nox -s tests`` is what CI runs (`.ci/run`) and what the README tells users to run.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

# Exact versions that this machine serves from local disk (~50 s); the package
# itself only declares ranges (torch>=2.4, torchvision>=0.19).
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]


def _install(session: nox.Session, *extras: str) -> None:
    session.install(*TORCH)
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install(spec)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, slow end-to-end tests included (pass -m 'not slow' to skip them)."""
    _install(session, "test")
    session.run("pytest", *(session.posargs or ["-q"]), env={"OMP_NUM_THREADS": "2"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over everything, and the import-linter contracts (layers, public plugin imports)."""
    session.install("ruff", "import-linter>=2.1")
    session.install("--no-deps", "-e", ".")
    session.run("ruff", "check", "core", "plugins", "tests", "bench", "noxfile.py")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the core."""
    _install(session)
    session.install("mypy", "pytest")  # pretrain.testing's pytest helpers are typed against pytest
    session.run("mypy", "core/pretrain")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks that print figures (start-up, engine overhead, data loading)."""
    _install(session, "test")
    session.run("python", "bench/startup.py")
    session.run("python", "bench/overhead.py")
    session.run("python", "bench/data.py")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: train the quick-start spec on the bundled digits."""
    _install(session)
    session.run("pretrain", "train", "examples/specs/quickstart.toml", "--run-dir", "runs/quickstart")
