"""The run directory: resolved spec, per-epoch metrics, curves, checkpoints.

::

    runs/<name>/
      spec.toml                 the merged, validated spec this run trains (``--set`` applied)
      metrics.jsonl             one JSON object per epoch
      curves.png                train loss and validation metrics per epoch
      checkpoints/
        last.safetensors        weights of the last checkpoint (for ``pretrain eval``)
        best.safetensors        weights of the best epoch by ``train.best_metric``
        last.state.safetensors  everything ``--resume`` needs
        last.json               human-readable counters of ``last``

All files are replaced atomically; ``metrics.jsonl`` is rewritten from the
checkpoint's history on resume, so a run killed between writes never shows an
epoch twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pretrain.engine.checkpoint import atomic_write_bytes
from pretrain.errors import PretrainError

__all__ = ["RunDir"]


class RunDir:
    """Paths and writers of one run directory.

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
        self.spec_file = self.path / "spec.toml"
        self.metrics_file = self.path / "metrics.jsonl"
        self.plot_file = self.path / "curves.png"

    def has_checkpoint(self) -> bool:
        """Whether an earlier run left checkpoints here."""
        return any(p.exists() for p in (self.state_file, self.last_weights, self.best_weights))

    def check_fresh_start(self) -> None:
        """Refuse to start a new run over an earlier run's checkpoints.

        Raises:
            PretrainError: The directory has checkpoints (nothing is touched).

        """
        if not self.has_checkpoint():
            return
        where = ""
        if self.last_json.exists():
            try:
                info = json.loads(self.last_json.read_text(encoding="utf-8"))
                where = f" (last checkpoint: epoch {info['epoch']}, step {info['step']})"
            except (OSError, ValueError, KeyError):
                pass
        raise PretrainError(
            f"the run directory {self.path} already holds checkpoints of an earlier run{where}; "
            "refusing to overwrite them (nothing was changed).",
            hint="Continue that run with --resume, or start a new one elsewhere with "
            "--run-dir DIR (or delete the directory).",
        )

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

    def read_spec(self) -> dict[str, Any] | None:
        """The spec an earlier run wrote, if any."""
        import tomllib

        if self.spec_file.exists():
            return tomllib.loads(self.spec_file.read_text(encoding="utf-8"))
        alt = self.spec_file.with_suffix(".json")
        if alt.exists():
            return dict(json.loads(alt.read_text(encoding="utf-8")))
        return None

    def write_metrics(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` from the full history (one line per epoch)."""
        text = "".join(json.dumps(dict(r)) + "\n" for r in history)
        atomic_write_bytes(self.metrics_file, text.encode("utf-8"))

    def read_metrics(self) -> list[dict[str, Any]]:
        """Parse ``metrics.jsonl`` (empty when absent)."""
        if not self.metrics_file.exists():
            return []
        lines = self.metrics_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively (TOML writers want plain containers)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
