"""Experiment trackers: [train.loggers] validation, and TensorBoard / MLflow / wandb files written offline."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from _engine_specs import TINY_RESNET, digits_data, tiny_spec
from conftest import SPECS
from pretrain.errors import SpecError
from pretrain.spec.files import load_spec
from pretrain.spec.validate import validate_spec

needs = {name: pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"{name} not installed")
         for name in ("tensorboard", "mlflow", "wandb")}


def _issues(spec: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        validate_spec(spec)
    return [f"{i.loc}: {i.msg}" for i in info.value.issues]


def test_unknown_tracker_and_bad_option_have_spec_paths() -> None:
    spec = tiny_spec(loggers={"tensorbord": {}, "mlflow": {"experimnt": "x"}})
    issues = _issues(spec)
    assert any(i.startswith("train.loggers.tensorbord: unknown tracker 'tensorbord'") and "tensorboard" in i
               for i in issues), issues
    assert any(i.startswith("train.loggers.mlflow.experimnt") and "experiment" in i for i in issues), issues


def test_missing_extra_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    issues = _issues(tiny_spec(loggers={"wandb": {"mode": "offline"}}))
    assert any(i.startswith("train.loggers.wandb") and "pip install 'pretrain[wandb]'" in i for i in issues), issues


@pytest.mark.slow
@needs["tensorboard"]
@needs["mlflow"]
def test_quickstart_tensorboard_and_mlflow_hold_the_metrics_jsonl_values(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import pretrain

    run = tmp_path / "run"
    raw = load_spec(SPECS / "quickstart.toml", ["train.epochs=2", "data.batch_size=512", "train.device=\"cpu\"",
                                                "data.train.pipeline=[]",
                                                "train.loggers={tensorboard = {}, mlflow = {}}"])
    record = pretrain.train(raw, run_dir=run)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert history[-1] == record and len(history) == 2

    tb = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    client = MlflowClient((run / "mlruns").resolve().as_uri())
    (mlrun,) = client.search_runs([client.get_experiment_by_name("pretrain").experiment_id])
    for key in ("train_loss", "accuracy/top1", "accuracy/top5", "lr", "images_per_s"):
        steps, values = [r["step"] for r in history], [r[key] for r in history]
        events = tb.Scalars(key)  # TensorBoard stores float32
        assert [e.step for e in events] == steps and [e.value for e in events] == pytest.approx(values, rel=1e-6)
        got = sorted((m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, key))
        assert [g[0] for g in got] == steps and [g[1] for g in got] == values, key  # MLflow: exact doubles
    assert len(tb.Scalars("train/loss")) == 6  # every step's loss (read back every step on CPU)
    assert "confusion_matrix" in tb.Tags()["images"]
    assert mlrun.data.params["model.backbone.type"] == "ResNet_CIFAR"
    assert mlrun.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(mlrun.info.run_id)] and "spec.toml" in \
        {a.path for a in client.list_artifacts(mlrun.info.run_id)}


@needs["wandb"]
def test_wandb_offline_writes_a_run_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pretrain

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    spec = tiny_spec(TINY_RESNET, data=digits_data(batch_size=256, augment=False), max_steps=2,
                     loggers={"wandb": {"mode": "offline", "project": "t"}})
    pretrain.train(spec, run_dir=tmp_path / "run")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), os.listdir(tmp_path / "run" / "wandb")


def test_a_raising_hook_is_attributed_to_its_own_instance_when_plugins_share_a_class() -> None:
    """Tracker plugins are instances of one base class: the error must name the one that raised."""
    import pluggy

    from pretrain import hookimpl, hookspecs
    from pretrain.errors import PluginError
    from pretrain.registry.plugins import HookCaller

    class Tracker:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        @hookimpl
        def pretrain_train_start(self, trainer: object) -> None:
            if self.fail:
                raise RuntimeError("boom")

    pm = pluggy.PluginManager("pretrain")
    pm.add_hookspecs(hookspecs)
    pm.register(Tracker(fail=True), name="acme:broken")
    pm.register(Tracker(fail=False), name="acme:fine")
    with pytest.raises(PluginError, match="plugin acme:broken .*boom"):
        HookCaller(pm).call("pretrain_train_start", trainer=None)
