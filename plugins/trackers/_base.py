"""What every built-in tracker shares: config checks, rank-0 sessions, routing of the hooks.

A tracker is a pluggy plugin (entry-point group ``pretrain.plugins``) that answers
``pretrain_logger_schemas`` with its name and config model, and acts on the training
hooks only for runs whose ``[train.loggers]`` table names it, on rank 0. A subclass
implements :meth:`TrackerPlugin.open`, returning a :class:`Session` that writes to the
tracker; third-party trackers can subclass these too, or implement the hooks directly.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pretrain import hookimpl

__all__ = ["Session", "TrackerConfig", "TrackerPlugin", "flatten_params", "numeric_metrics"]


class TrackerConfig(BaseModel):
    """Options every tracker takes; subclasses set ``_package`` (the import that must exist) and add fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _package: ClassVar[str] = ""
    _extra: ClassVar[str] = ""

    images: bool = Field(default=True, description="Log images: the validation confusion matrix of classifiers, "
                         "MAE-style reconstructions of models with reconstruct().")
    step_scalars: bool = Field(default=True, description="Log train/loss, train/lr and train/images_per_s at "
                               "each loss read-back, besides the per-epoch records.")

    @model_validator(mode="after")
    def _installed(self) -> TrackerConfig:
        if self._package and importlib.util.find_spec(self._package) is None:
            raise ValueError(f"this tracker needs the {self._package} package, which is not installed: "
                             f"pip install 'pretrain[{self._extra}]'")
        return self


def numeric_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite fields of a ``metrics.jsonl`` record except the counters (epoch, step)."""
    out = {}
    for key, value in record.items():
        if key in ("epoch", "step") or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


def flatten_params(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A resolved spec as flat ``dotted.key -> value`` strings (tracker params / hyper-parameters)."""
    out: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


class Session:
    """One run's connection to a tracker (rank 0 only)."""

    def params(self, params: dict[str, str], spec_file: Path | None) -> None:
        """Record the resolved spec (flat params, and the spec file where the tracker keeps files)."""

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Record scalar values at a global optimizer step."""
        raise NotImplementedError

    def images(self, images: dict[str, Any], step: int) -> None:
        """Record uint8 (H, W, 3) images at a step."""

    def flush(self) -> None:
        """Make everything logged so far durable (called after every epoch)."""

    def close(self) -> None:
        """End the session."""


class TrackerPlugin:
    """Base of the built-in trackers: routes the training hooks to a :class:`Session`."""

    name: ClassVar[str]
    config_model: ClassVar[type[TrackerConfig]]

    def __init__(self) -> None:
        self._sessions: dict[int, tuple[Session, TrackerConfig]] = {}

    def open(self, trainer: Any, config: Any) -> Session:
        """Start a session for ``trainer``'s run (rank 0)."""
        raise NotImplementedError

    @hookimpl
    def pretrain_logger_schemas(self) -> dict[str, Any]:
        """This tracker's name and config model."""
        return {self.name: self.config_model}

    def _session(self, trainer: Any) -> tuple[Session, TrackerConfig] | None:
        return self._sessions.get(id(trainer))

    @hookimpl
    def pretrain_train_start(self, trainer: Any) -> None:
        """Open the session and record the resolved spec."""
        config = trainer.cfg.loggers.get(self.name)
        if config is None or not trainer.dist.is_main:
            return
        session = self.open(trainer, config)
        self._sessions[id(trainer)] = (session, config)
        spec_file = trainer.run.spec_file if trainer.run.spec_file.exists() else None
        session.params(flatten_params(trainer.spec.raw), spec_file)

    @hookimpl
    def pretrain_log_scalars(self, trainer: Any, step: int, scalars: dict[str, float]) -> None:
        """Step-level scalars."""
        found = self._session(trainer)
        if found is not None and found[1].step_scalars:
            found[0].scalars(dict(scalars), step)

    @hookimpl
    def pretrain_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, Any]) -> None:
        """The epoch's record, under the same names as ``metrics.jsonl``, at its global step."""
        found = self._session(trainer)
        if found is not None:
            found[0].scalars(numeric_metrics(metrics), int(metrics["step"]))
            found[0].flush()

    @hookimpl
    def pretrain_log_images(self, trainer: Any, step: int, images: dict[str, Any]) -> None:
        """Images of an evaluated epoch."""
        found = self._session(trainer)
        if found is not None and found[1].images:
            found[0].images(images, step)
            found[0].flush()

    @hookimpl
    def pretrain_train_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
        """Close the session."""
        found = self._sessions.pop(id(trainer), None)
        if found is not None:
            found[0].close()
