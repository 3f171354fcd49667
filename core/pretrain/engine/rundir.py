"""The run directory: resolved spec, per-epoch metrics, curves, checkpoints; the only code that knows its layout.

::

    runs/<name>/
      spec.toml                 the merged, validated spec this run trains (``--set`` applied)
      metrics.jsonl             one JSON object per epoch
      curves.png                train loss and validation metrics per epoch
      confusion_matrix.png      classifiers: the last validation's confusion matrix
      classes.json              the training dataset's class names, in label order (``pretrain predict``)
      .pretrain.lock            held (fcntl) while a run writes here: pid and host inside
      checkpoints/
        last.safetensors        weights of the last checkpoint (for ``pretrain eval``)
        best.safetensors        weights of the best epoch by ``train.best_metric``
        last.state.safetensors  everything ``--resume`` needs
        last.json               human-readable counters of ``last``

An FSDP run (``train.strategy = "fsdp"``) writes each of these safetensors files as
one file per rank plus an index (:mod:`pretrain.engine.sharded`)::

        last-00000-of-00002.safetensors ...       last.index.json
        best-00000-of-00002.safetensors ...       best.index.json
        last.state-00000-of-00002.safetensors ... last.state.index.json

All files are replaced atomically; ``metrics.jsonl`` is rewritten from the
checkpoint's history on resume, so a run killed between writes never shows an
epoch twice. A run holds an exclusive lock on the directory for its whole
duration, so two runs can never write into one directory; the kernel releases
the lock when the process dies, so a crashed run leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pretrain.engine.checkpoint import CheckpointError, atomic_write_bytes, read_metadata_json
from pretrain.engine.sharded import read_index
from pretrain.errors import PretrainError

__all__ = ["RunDir", "RunDirError"]

#: Names a run writes at the top of its directory (anything else is the user's).
_OWN_FILES = frozenset({"spec.toml", "spec.json", "metrics.jsonl", "curves.png", ".pretrain.lock",
                        "checkpoints", "classes.json", "confusion_matrix.png"})


class RunDirError(PretrainError):
    """The run directory cannot be used as asked (locked, foreign files, nothing to resume)."""


class RunDir:
    """Paths, checks, lock and writers of one run directory.

    Args:
        path: The directory (created on first write).

    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.state_file = self.checkpoints / "last.state.safetensors"
        self.last_weights = self.checkpoints / "last.safetensors"
        self.best_weights = self.checkpoints / "best.safetensors"
        self.last_json = self.checkpoints / "last.json"
        self.state_index = self.checkpoints / "last.state.index.json"
        self.spec_file = self.path / "spec.toml"
        self.metrics_file = self.path / "metrics.jsonl"
        self.plot_file = self.path / "curves.png"
        self.confusion_file = self.path / "confusion_matrix.png"
        self.classes_file = self.path / "classes.json"
        self.lock_file = self.path / ".pretrain.lock"
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ reading

    def shard_file(self, name: Literal["last", "best", "last.state"], rank: int, world_size: int) -> Path:
        """Rank ``rank``'s file of the sharded checkpoint ``name`` (FSDP runs)."""
        return self.checkpoints / f"{name}-{rank:05d}-of-{world_size:05d}.safetensors"

    def shard_index(self, name: Literal["last", "best", "last.state"]) -> Path:
        """The index of the sharded checkpoint ``name`` (FSDP runs)."""
        return self.checkpoints / f"{name}.index.json"

    def weights(self, prefer: Literal["best", "last"] = "best") -> Path:
        """The weights of this run: ``prefer``'s, else the other one (a file, or a sharded index).

        Raises:
            RunDirError: The directory holds no weights.

        """
        order = ("best", "last") if prefer == "best" else ("last", "best")
        for name in order:
            for path in (self.checkpoints / f"{name}.safetensors", self.shard_index(name)):  # type: ignore[arg-type]
                if path.is_file():
                    return path
        raise RunDirError(
            f"{self.path} holds no weights (no checkpoints/best.safetensors or last.safetensors)",
            hint="Pass a .safetensors file, or a run directory that `pretrain train` has written.",
        )

    def resume_state(self) -> Path | None:
        """The state ``--resume`` reads: ``last.state.safetensors``, or its sharded index; None if neither."""
        for path in (self.state_file, self.state_index):
            if path.is_file():
                return path
        return None

    @staticmethod
    def resolve_weights(path: str | Path, prefer: Literal["best", "last"] = "best") -> Path:
        """A weights file as given, or a run directory's (``prefer`` first).

        Raises:
            RunDirError: A directory without weights, or a path that does not exist.

        """
        path = Path(path)
        if path.is_dir():
            return RunDir(path).weights(prefer)
        if not path.exists():
            raise RunDirError(f"weights file {path} does not exist",
                              hint="Pass a .safetensors file or a run directory.")
        return path

    def has_checkpoint(self) -> bool:
        """Whether an earlier run left checkpoints here."""
        own = (self.state_file, self.state_index, self.last_weights, self.best_weights,
               self.shard_index("last"), self.shard_index("best"))
        return any(p.exists() for p in own)

    def foreign_entries(self) -> list[str]:
        """Entries of the directory that no run wrote (the user's own files).

        Only a directory a run has claimed (it holds ``.pretrain.lock``, created before
        anything else) can hold a run's files: elsewhere every entry is the user's,
        ``spec.toml`` included (``pretrain train spec.toml --run-dir .``).
        """
        if not self.path.is_dir():
            return []
        names = sorted(p.name for p in self.path.iterdir())
        if not self.lock_file.exists():
            return names
        return [name for name in names if name not in _OWN_FILES]

    def read_spec(self) -> dict[str, Any] | None:
        """The spec an earlier run wrote, if any."""
        import tomllib

        if self.spec_file.exists():
            return tomllib.loads(self.spec_file.read_text(encoding="utf-8"))
        alt = self.spec_file.with_suffix(".json")
        if alt.exists():
            return dict(json.loads(alt.read_text(encoding="utf-8")))
        return None

    def read_classes(self) -> list[str] | None:
        """The class names the run trained on (``classes.json``), or None when absent."""
        if not self.classes_file.exists():
            return None
        try:
            doc = json.loads(self.classes_file.read_text(encoding="utf-8"))
            return [str(c) for c in doc["classes"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunDirError(f"{self.classes_file} is not a classes file ({type(exc).__name__}: {exc})",
                              hint="Delete it (predict then shows class indices) or restore it.") from None

    @staticmethod
    def for_weights(path: str | Path) -> RunDir | None:
        """The run directory a weights path belongs to (the directory itself, or ``<run>/checkpoints/<file>``)."""
        path = Path(path)
        if path.is_dir():
            return RunDir(path)
        if path.parent.name == "checkpoints":
            return RunDir(path.parent.parent)
        return None

    def read_metrics(self) -> list[dict[str, Any]]:
        """Parse ``metrics.jsonl`` (empty when absent)."""
        if not self.metrics_file.exists():
            return []
        lines = self.metrics_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    # ------------------------------------------------------------------ checks (nothing written)

    def check_usable(self) -> None:
        """The path is a directory (or can become one).

        Raises:
            RunDirError: It is a file, or a parent is a file.

        """
        for parent in (self.path, *self.path.parents):
            if parent.exists() and not parent.is_dir():
                raise RunDirError(
                    f"the run directory {self.path} cannot be created: {parent} is a file",
                    hint="Pass --run-dir with a directory path.",
                )
            if parent.exists():
                break

    def check_fresh_start(self) -> None:
        """Refuse a new run in a directory with checkpoints or files of the user's.

        Raises:
            RunDirError: Checkpoints of an earlier run, or foreign files (nothing is touched).

        """
        self.check_usable()
        if self.has_checkpoint():
            where = ""
            if self.last_json.exists():
                try:
                    info = json.loads(self.last_json.read_text(encoding="utf-8"))
                    where = f" (last checkpoint: epoch {info['epoch']}, step {info['step']})"
                except (OSError, ValueError, KeyError):
                    pass
            raise RunDirError(
                f"the run directory {self.path} already holds checkpoints of an earlier run{where}; "
                "refusing to overwrite them (nothing was changed).",
                hint="Continue that run with --resume, or start a new one elsewhere with "
                "--run-dir DIR (or delete the directory).",
            )
        foreign = self.foreign_entries()
        if foreign:
            shown = ", ".join(foreign[:6]) + (" ..." if len(foreign) > 6 else "")
            raise RunDirError(
                f"the run directory {self.path} holds files that are not a run's ({shown}); "
                "a new run would write spec.toml, metrics.jsonl, curves.png and checkpoints/ "
                "among them (nothing was changed).",
                hint="Choose an empty or new directory with --run-dir (the default is "
                "runs/<spec name>).",
            )

    def check_resumable(self) -> bool:
        """Whether there is a run to resume; refuse when checkpoints exist but the state does not.

        Returns:
            True when ``last.state.safetensors`` exists; False when the directory holds no
            checkpoint at all (the run starts fresh).

        Raises:
            RunDirError: Weights files exist but their state file is missing, or the
                state file is damaged (nothing is touched: ``best``/``last``/``metrics.jsonl``
                stay as they are).

        """
        self.check_usable()
        state = self.resume_state()
        if state is not None:
            try:  # the header (or the shards' index) only: read_state verifies the whole state before using it
                read_metadata_json(state) if state == self.state_file else read_index(state)
            except CheckpointError as exc:
                raise RunDirError(
                    f"cannot resume {self.path}: its state file is damaged ({state.name}: {exc.message}); "
                    "nothing was changed.",
                    hint=f"Restore checkpoints/{state.name} from a copy, or start a new run "
                    "in another directory, initialising the model from checkpoints/last.safetensors "
                    "(or best) with a Pretrained init rule.",
                ) from exc
            return True
        if self.has_checkpoint():
            found = [p.name for p in (self.last_weights, self.best_weights, self.shard_index("last"),
                                      self.shard_index("best")) if p.exists()]
            raise RunDirError(
                f"cannot resume {self.path}: {', '.join(found)} exist but "
                f"{self.state_file.name} (the optimizer, RNG and counter state) is missing, so "
                "the run cannot continue where it stopped; nothing was changed.",
                hint="Start a new run in another directory, initialising the model from "
                f"{found[0]} with a Pretrained init rule; or restore the state file.",
            )
        return False

    def claim(self, *, resume: bool) -> bool:
        """Check the directory for a new or resumed run, then take its lock; nothing is written.

        Returns:
            Whether there is a run to resume (False for a fresh start).

        Raises:
            RunDirError: See :meth:`check_fresh_start`, :meth:`check_resumable`, :meth:`acquire_lock`.

        """
        self.check_not_locked()  # a running run is the first thing to report, whatever else is here
        if resume:
            resuming = self.check_resumable()
        else:
            self.check_fresh_start()
            resuming = False
        self.acquire_lock()
        return resuming

    def check_not_locked(self) -> None:
        """Refuse a directory another live process holds, without creating anything.

        Raises:
            RunDirError: The lock file exists and is held (its pid and host are named).

        """
        import fcntl

        try:
            fd = os.open(self.lock_file, os.O_RDWR)
        except OSError:  # no lock file (or none we may open): acquire_lock decides
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._in_use(fd) from None
        finally:
            os.close(fd)  # closing releases a lock taken here

    # ------------------------------------------------------------------ lock

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's exclusive lock (``fcntl.flock``) while the block runs.

        Raises:
            RunDirError: Another live process holds it (its pid and host are named).

        """
        self.acquire_lock()
        try:
            yield
        finally:
            self.release_lock()

    def acquire_lock(self) -> None:
        """Take the lock (see :meth:`locked`)."""
        import fcntl

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(
                f"cannot use the run directory {self.path}: {exc.strerror or exc} "
                f"({exc.filename or self.lock_file})",
                hint="Choose a directory you can write to with --run-dir.",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = self._in_use(fd)
            os.close(fd)
            raise error from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._lock_fd = fd

    def _in_use(self, fd: int) -> RunDirError:
        holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another process"
        return RunDirError(
            f"the run directory {self.path} is in use by a running `pretrain train` ({holder}); "
            "two runs writing one directory would overwrite each other's checkpoints.",
            hint="Wait for that run to finish, stop it, or use another --run-dir.",
        )

    def release_lock(self) -> None:
        """Release the lock (the file stays; it is empty when no run holds it)."""
        if self._lock_fd is None:
            return
        import fcntl

        with contextlib.suppress(OSError):
            os.ftruncate(self._lock_fd, 0)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = None

    # ------------------------------------------------------------------ writing

    def write_spec(self, raw: Mapping[str, Any]) -> Path:
        """Write the resolved spec as TOML (JSON when TOML cannot hold it, e.g. nulls)."""
        import tomli_w

        try:
            text = tomli_w.dumps(_plain(raw))
            path = self.spec_file
        except (TypeError, ValueError):
            text = json.dumps(raw, indent=2)
            path = self.spec_file.with_suffix(".json")
        atomic_write_bytes(path, text.encode("utf-8"))
        return path

    def write_classes(self, classes: Sequence[str]) -> None:
        """Write the class names in label order (``{"classes": [...]}``)."""
        text = json.dumps({"classes": [str(c) for c in classes]}, indent=1) + "\n"
        atomic_write_bytes(self.classes_file, text.encode("utf-8"))

    def write_metrics(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` from the full history (one line per epoch)."""
        text = "".join(json.dumps(dict(r)) + "\n" for r in history)
        atomic_write_bytes(self.metrics_file, text.encode("utf-8"))


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively (TOML writers want plain containers)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
