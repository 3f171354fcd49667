"""Weights & Biases tracker: ``[train.loggers.wandb]`` (``pip install 'pretrain[wandb]'``).

``mode = "offline"`` (the default) writes the run under ``<run_dir>/wandb`` without
touching the network; ``wandb sync`` uploads it later. ``mode = "online"`` logs live
(after ``wandb login``). The resolved spec is the run's config; each epoch record is
logged under its ``metrics.jsonl`` names at its global step, with step scalars and
images (``wandb.Image``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from pretrain_builtins.trackers._base import Session, TrackerConfig, TrackerPlugin

__all__ = ["WandbConfig", "WandbTracker", "plugin"]


class WandbConfig(TrackerConfig):
    """Options of ``[train.loggers.wandb]``."""

    _package: ClassVar[str] = "wandb"
    _extra: ClassVar[str] = "wandb"

    project: str = Field(default="pretrain", description="Project name.")
    entity: str | None = Field(default=None, description="Team or user (default: wandb's default).")
    name: str | None = Field(default=None, description="Run name (default: the run directory's name).")
    mode: Literal["offline", "online", "disabled"] = Field(
        default="offline", description="offline writes files only (no network); online logs live.")
    dir: str | None = Field(default=None, description="Folder for wandb's files (default: the run directory).")
    tags: list[str] = Field(default_factory=list, description="Tags of the run.")


class _WandbSession(Session):
    def __init__(self, config: WandbConfig, run_dir: Path, spec: dict[str, Any]) -> None:
        import wandb

        self._wandb = wandb
        folder = Path(config.dir) if config.dir else run_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=config.project, entity=config.entity, name=config.name or run_dir.name,
                              mode=config.mode, dir=str(folder), config=spec, tags=config.tags,
                              reinit="create_new")

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def images(self, images: dict[str, Any], step: int) -> None:
        self.run.log({k: self._wandb.Image(v) for k, v in images.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class WandbTracker(TrackerPlugin):
    """Logs to Weights & Biases."""

    name: ClassVar[str] = "wandb"
    config_model: ClassVar[type[TrackerConfig]] = WandbConfig

    def open(self, trainer: Any, config: Any) -> Session:
        """``wandb.init`` with the resolved spec as config."""
        return _WandbSession(config, trainer.run.path, dict(trainer.spec.raw))


#: The object the ``pretrain.plugins`` entry point names.
plugin = WandbTracker()
