"""TensorBoard tracker: ``[train.loggers.tensorboard]`` (``pip install 'pretrain[tensorboard]'``).

Writes event files with ``torch.utils.tensorboard.SummaryWriter`` into
``<run_dir>/tensorboard`` (or ``log_dir``): every numeric field of each epoch record
under its ``metrics.jsonl`` name at the epoch's last global step, step scalars
(``train/loss``, ``train/lr``, ``train/images_per_s``), the resolved spec as text,
and images. Look at them with ``tensorboard --logdir runs/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from pretrain_builtins.trackers._base import Session, TrackerConfig, TrackerPlugin

__all__ = ["TensorBoardConfig", "TensorBoardTracker", "plugin"]


class TensorBoardConfig(TrackerConfig):
    """Options of ``[train.loggers.tensorboard]``."""

    _package: ClassVar[str] = "tensorboard"
    _extra: ClassVar[str] = "tensorboard"

    log_dir: str | None = Field(default=None, description="Event file folder (default: <run_dir>/tensorboard).")
    flush_secs: int = Field(default=30, gt=0, description="Seconds between background flushes.")


class _TensorBoardSession(Session):
    def __init__(self, log_dir: Path, flush_secs: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=flush_secs)

    def params(self, params: dict[str, str], spec_file: Path | None) -> None:
        text = spec_file.read_text(encoding="utf-8") if spec_file is not None else \
            "\n".join(f"{k} = {v}" for k, v in params.items())
        self.writer.add_text("spec", "```toml\n" + text + "\n```", global_step=0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)

    def images(self, images: dict[str, Any], step: int) -> None:
        for key, image in images.items():
            self.writer.add_image(key, image, global_step=step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TensorBoardTracker(TrackerPlugin):
    """Writes TensorBoard event files."""

    name: ClassVar[str] = "tensorboard"
    config_model: ClassVar[type[TrackerConfig]] = TensorBoardConfig

    def open(self, trainer: Any, config: Any) -> Session:
        """A SummaryWriter on the run's event folder."""
        log_dir = Path(config.log_dir) if config.log_dir else trainer.run.path / "tensorboard"
        return _TensorBoardSession(log_dir, config.flush_secs)


#: The object the ``pretrain.plugins`` entry point names.
plugin = TensorBoardTracker()
