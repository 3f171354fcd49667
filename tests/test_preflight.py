"""What `pretrain validate` runs before training: the whole step on the spec's own batches.

A third-party self-supervised model ("fake-ssl", :mod:`_preflight_fakes`) with a
wrong predictor width, or without ``MultiView`` in ``data.val``, validated ``ok`` and
failed in training; the built-in multi-view algorithms' data requirements were never
checked against ``[data]``. Here each mistake fails the check with the spec path to
change and the distribution whose component raised.
"""

from __future__ import annotations

import copy
import json
import re
import traceback

import pytest

from _preflight_fakes import SSL, SSL_EPS, VIEWS, ssl_spec
from conftest import SPECS, run_cli, write_dist
from pretrain import SpecError, load_spec, validate_spec
from pretrain.engine.preflight import check_model


@pytest.fixture
def ssl(site):
    write_dist(site, "fake-ssl", version="0.3.1", entry_points=SSL_EPS,
               modules={"fakeplug_ssl/__init__.py": "", "fakeplug_ssl/algo.py": SSL})
    return site


def issues_of(spec: dict, **kwargs) -> list:
    return check_model(validate_spec(copy.deepcopy(spec)), **kwargs).issues


def test_a_correct_custom_algorithm_runs_both_steps_on_its_views(ssl):
    report = check_model(validate_spec(ssl_spec()))
    assert report.issues == [] and report.device == "cpu"
    assert [(s.split, s.call) for s in report.steps] == [
        ("train", "model.loss (training mode)"), ("val", "model.loss (eval mode)")]
    assert report.steps[0].inputs == "2 views [(2, 1, 16, 16), (2, 1, 16, 16)]"


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_wrong_predictor_width_names_the_predictor_and_its_distribution(ssl, device):
    (issue,) = issues_of(ssl_spec(predictor_in=4), device=device)
    assert issue.loc == "model.head.predictor"
    assert "MLP (from distribution fake-ssl, version 0.3.1)" in issue.msg
    # the CPU's and the meta device's words for a (2, 8) @ (4, 16) product
    assert re.search(r"mat1 and mat2 shapes cannot be multiplied|must have same reduction dim", issue.msg)
    assert "(during model.loss (training mode) on a data.train batch 2 views" in issue.msg


def test_data_val_without_multiview_is_named(ssl):
    (issue,) = issues_of(ssl_spec(val_pipeline=[]))
    assert issue.loc == "data.val"
    assert "works on data.train batches but not on data.val's ((2, 1, 16, 16))" in issue.msg
    assert "needs 2 views per batch but got 1" in issue.msg and "data.val.pipeline" in issue.msg


def debug_traceback(*args: str) -> str:
    """What ``pretrain --debug ...`` prints: the error's traceback, causes included."""
    from pretrain.cli import main

    with pytest.raises(SpecError) as err:
        main(["--debug", *args])
    return "".join(traceback.format_exception(err.value))


def test_validate_cli_reports_it_with_exit_1_and_debug_shows_the_components_frames(ssl, tmp_path, capsys):
    from pretrain.cli import main

    path = tmp_path / "ssl.json"
    path.write_text(json.dumps(ssl_spec(predictor_in=4)), encoding="utf-8")
    assert main(["validate", str(path), "--json"]) == 1
    (error,) = json.loads(capsys.readouterr().out)["errors"]
    assert error["loc"] == "model.head.predictor" and "fake-ssl" in error["msg"]
    shown = debug_traceback("validate", str(path))
    assert "fakeplug_ssl/algo.py" in shown and "in forward" in shown  # inside MLP.forward


def test_meta_unsafe_init_fails_validate_with_the_rule_and_the_traceback_under_debug(ssl, tmp_path, capsys):
    from pretrain.cli import main

    path = tmp_path / "meta.toml"
    path.write_text('[model]\ntype = "ImageClassifier"\n[model.backbone]\ntype = "DropPathRates"\n'
                    '[model.neck]\ntype = "GlobalAveragePooling"\n'
                    '[model.head]\ntype = "LinearClsHead"\nnum_classes = 3\nin_channels = 4\n', encoding="utf-8")
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    flat = " ".join(err.split())
    assert "Traceback" not in err
    assert "model.backbone: building backbone 'DropPathRates' on the meta device failed" in flat
    assert "fake-ssl, version 0.3.1" in flat and "no .item(), .tolist()" in flat
    assert "spec_issues" not in flat  # no guess that blames the wrong method
    shown = debug_traceback("validate", str(path))
    assert "fakeplug_ssl/algo.py" in shown and "in __init__" in shown


@pytest.mark.slow  # two CLI processes
def test_validate_in_a_subprocess_exits_1_without_a_traceback(ssl, tmp_path):
    path = tmp_path / "ssl.json"
    path.write_text(json.dumps(ssl_spec(predictor_in=4)), encoding="utf-8")
    res = run_cli("validate", str(path))
    assert res.returncode == 1 and "Traceback" not in res.stderr and "model.head.predictor" in res.stderr
    debug = run_cli("--debug", "validate", str(path))
    assert debug.returncode == 1 and "fakeplug_ssl/algo.py" in debug.stderr


# ------------------------------------------------------------------------------ built-in algorithms


def digits(name: str) -> dict:
    return load_spec(str(SPECS / f"{name}_vit-tiny_digits.toml"))


def test_builtin_multiview_algorithms_data_requirements_are_checked_against_the_data():
    raw = digits("simclr")
    raw["data"]["val"]["pipeline"] = []
    (issue,) = issues_of(raw)
    assert issue.loc == "data.val.pipeline" and "SimCLR compares 2 views" in issue.msg and "MultiView" in issue.msg
    raw = digits("byol")  # MMPretrain's form: one view from each of two pipelines
    views = raw["data"]["train"]["pipeline"][0]
    views["num_views"], views["transforms"] = [1], views["transforms"][:1]
    locs = [i.loc for i in issues_of(raw)]
    assert locs == ["data.train.pipeline[0].num_views"]


def test_moco_queue_against_the_batch_per_process():
    raw = digits("mocov2")
    raw["data"]["batch_size"] = 48  # 1024 keys are not a multiple of 48 per step
    (issue,) = issues_of(raw)
    assert issue.loc == "model.queue_len" and "48" in issue.msg


def test_masked_batches_come_from_the_spec_pipeline():
    report = check_model(validate_spec(load_spec(str(SPECS / "simmim_swin-tiny_digits.toml"))))
    assert report.issues == []
    assert report.steps[0].inputs.startswith("Masked(images (2, 1, 16, 16), mask (2, ")


def test_without_data_the_model_example_inputs_are_used():
    raw = digits("simsiam")
    del raw["data"], raw["train"]
    report = check_model(validate_spec(raw))
    assert report.issues == [] and report.steps[0].split == "example"
    assert report.steps[0].inputs.startswith("2 views")


def test_meta_failures_are_repeated_on_the_cpu():
    # MoCo's momentum teacher reads its step counter (int(tensor)): the meta device cannot run that.
    raw = digits("mocov2")
    report = check_model(validate_spec(raw), device="meta")
    assert report.issues and "meta" in report.issues[0].msg
    report = check_model(validate_spec(raw), device="auto")
    assert report.issues == [] and report.device == "cpu"


def test_the_check_leaves_the_global_rng_alone():
    import torch

    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    check_model(validate_spec(digits("simclr")))
    assert torch.equal(torch.rand(3), expected)


def test_a_val_pipeline_that_differs_is_still_fine_when_the_model_accepts_it():
    raw = digits("simclr")
    raw["data"]["val"]["pipeline"] = [dict(VIEWS, pipeline=[])]
    assert issues_of(raw) == []


def test_builtin_width_checks_point_at_the_field_and_the_component():
    raw = digits("byol")
    raw["model"]["head"]["predictor"]["in_channels"] = 32
    (issue,) = issues_of(raw)
    assert issue.loc == "model.head.predictor.in_channels"
    assert "is 32, but the width model.neck outputs (out_channels) is 64" in issue.msg
    assert "(raised while building BYOL, from pretrain " in issue.msg


def test_a_component_that_cannot_run_on_the_cpu_opts_out_with_a_reason(ssl, monkeypatch):
    import fakeplug_ssl.algo as algo

    monkeypatch.setattr(algo.MLP, "skip_step_check", "needs CUDA kernels", raising=False)
    report = check_model(validate_spec(ssl_spec(predictor_in=4)))  # the width error goes unseen
    assert report.issues == [] and report.steps == []
    assert report.notes == ["the steps were not run: model.neck (MLP) opts out (needs CUDA kernels)"]
