"""The run directory protects what it holds: a lock, no fresh start over foreign files or checkpoints,
no resume without a state file, and nothing touched when a run refuses to start."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from pretrain.engine.checkpoint import remove_stale_temp_files
from pretrain.engine.rundir import RunDir, RunDirError


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _hold_lock(path: str, ready, release) -> None:  # runs in a child process
    run = RunDir(path)
    run.acquire_lock()
    ready.set()
    release.wait(30)
    run.release_lock()


def test_lock_is_exclusive_names_the_holder_and_is_released(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    child.start()
    try:
        assert ready.wait(60)
        with pytest.raises(RunDirError, match=rf"in use by a running `pretrain train` \(pid {child.pid} on"):
            RunDir(tmp_path).acquire_lock()
    finally:
        release.set()
        child.join(60)
    with RunDir(tmp_path).locked():  # free again once the holder is gone
        pass


def test_lock_of_a_killed_process_is_not_stale(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    child.start()
    assert ready.wait(60)
    child.kill()
    child.join(60)
    with RunDir(tmp_path).locked():  # the kernel released the dead process's lock
        assert (tmp_path / ".pretrain.lock").read_text().startswith(f"pid {os.getpid()} ")


def test_fresh_start_refuses_foreign_files_and_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "spec.toml").write_text("# the user's own spec\n")
    (tmp_path / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    with pytest.raises(RunDirError, match="holds files that are not a run's"):
        RunDir(tmp_path).check_fresh_start()
    assert _snapshot(tmp_path) == before
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    run.best_weights.write_bytes(b"x")
    with pytest.raises(RunDirError, match="already holds checkpoints"):
        run.check_fresh_start()
    RunDir(tmp_path / "new").check_fresh_start()  # a new directory is fine


def test_run_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        RunDir(tmp_path / "f").check_fresh_start()
    with pytest.raises(RunDirError, match="is a file"):
        RunDir(tmp_path / "f" / "sub").check_resumable()


def test_resume_refuses_weights_without_state_and_changes_nothing(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.checkpoints.mkdir(parents=True)
    run.best_weights.write_bytes(b"best")
    run.last_weights.write_bytes(b"last")
    run.metrics_file.write_text('{"epoch": 1}\n')
    before = _snapshot(tmp_path)
    with pytest.raises(RunDirError, match="last.state.safetensors .*is missing"):
        run.check_resumable()
    assert _snapshot(tmp_path) == before
    assert RunDir(tmp_path / "empty").check_resumable() is False  # nothing to resume: a new run


def test_weights_prefer_best_or_last(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(RunDirError, match="holds no weights"):
        run.weights()
    run.checkpoints.mkdir()
    run.last_weights.write_bytes(b"l")
    assert run.weights("best") == run.last_weights
    run.best_weights.write_bytes(b"b")
    assert run.weights("best") == run.best_weights and run.weights("last") == run.last_weights
    assert RunDir.resolve_weights(tmp_path, "last") == run.last_weights
    with pytest.raises(RunDirError, match="does not exist"):
        RunDir.resolve_weights(tmp_path / "nope.safetensors")


def test_only_dead_writers_temp_files_are_removed(tmp_path: Path) -> None:
    live = tmp_path / f".last.safetensors.tmp-{os.getpid()}-abcd1234"
    dead = tmp_path / ".last.safetensors.tmp-999999999-abcd1234"
    live.write_bytes(b"in progress")
    dead.write_bytes(b"left by a killed run")
    assert remove_stale_temp_files(tmp_path) == [dead]
    assert live.exists() and not dead.exists()
