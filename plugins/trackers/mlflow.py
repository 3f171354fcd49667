"""MLflow tracker: ``[train.loggers.mlflow]`` (``pip install 'pretrain[mlflow]'``).

Logs through an explicit ``MlflowClient`` (no global active run, so several runs
in one process never mix): the resolved spec as flat params plus ``spec.toml`` as
an artifact, every numeric field of each epoch record under its ``metrics.jsonl``
name at the epoch's last global step, step scalars, and images. The default store
is a local file store, ``<run_dir>/mlruns`` (``mlflow ui --backend-store-uri
file:runs/NAME/mlruns``), which needs no server and no network; set
``tracking_uri`` for a tracking server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from pretrain_builtins.trackers._base import Session, TrackerConfig, TrackerPlugin

__all__ = ["MLflowConfig", "MLflowTracker", "plugin"]

_MAX_PARAM = 6000  # MLflow's limit on a param value's length


class MLflowConfig(TrackerConfig):
    """Options of ``[train.loggers.mlflow]``."""

    _package: ClassVar[str] = "mlflow"
    _extra: ClassVar[str] = "mlflow"

    tracking_uri: str | None = Field(
        default=None, description="Tracking URI (default: the file store file:<run_dir>/mlruns).")
    experiment: str = Field(default="pretrain", description="Experiment name (created when missing).")
    run_name: str | None = Field(default=None, description="Run name (default: the run directory's name).")
    tags: dict[str, str] = Field(default_factory=dict, description="Tags set on the run.")


class _MLflowSession(Session):
    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id

    def params(self, params: dict[str, str], spec_file: Path | None) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:_MAX_PARAM]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])
        if spec_file is not None:
            self.client.log_artifact(self.run_id, str(spec_file))

    def scalars(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def images(self, images: dict[str, Any], step: int) -> None:
        for key, image in images.items():
            self.client.log_image(self.run_id, image, key=key, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class MLflowTracker(TrackerPlugin):
    """Logs to MLflow."""

    name: ClassVar[str] = "mlflow"
    config_model: ClassVar[type[TrackerConfig]] = MLflowConfig

    def open(self, trainer: Any, config: Any) -> Session:
        """A new MLflow run in the configured experiment."""
        uri = config.tracking_uri or (trainer.run.path / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked; a local store without a server
            # (and without SQL dependencies) is exactly what an offline run wants.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return _MLflowSession(uri, config.experiment, config.run_name or trainer.run.path.name, dict(config.tags))


#: The object the ``pretrain.plugins`` entry point names.
plugin = MLflowTracker()
