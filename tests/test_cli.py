"""The `pretrain` CLI: output formats, exit codes, no tracebacks, torch-free help/listing."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest

from conftest import SPECS, run_cli

SEED_PARAMS = 11_173_962


def test_help_and_listing_do_not_import_torch():
    probe = (
        "import sys, io, contextlib\n"
        "from pretrain.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    main(['list-components'])\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules, 'pydantic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["False", "False"]


def test_exit_codes():
    assert run_cli().returncode == 2  # no command: usage
    assert run_cli("no-such-command").returncode == 2
    assert run_cli("validate").returncode == 2  # missing argument
    res = run_cli("validate", "does-not-exist.toml")
    assert res.returncode == 1 and "does not exist" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("spec", ["seed_tutorial.toml", "seed_tutorial.json"])
def test_validate_seed_spec(spec):
    res = run_cli("validate", str(SPECS / spec), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    payload = json.loads(res.stdout)
    assert payload["ok"] is True and payload["errors"] == [] and payload["params"] == SEED_PARAMS
    human = run_cli("validate", str(SPECS / spec))
    assert human.returncode == 0 and "11,173,962" in human.stdout


def test_validate_reports_shape_mismatch_json_and_human():
    args = [str(SPECS / "seed_tutorial.toml"), "--set", "model.head.in_channels=256"]
    res = run_cli("validate", *args, "--json")
    assert res.returncode == 1
    payload = json.loads(res.stdout)
    assert payload["ok"] is False
    (err,) = payload["errors"]
    assert err["loc"] == "model.head.in_channels"
    assert "256" in err["msg"] and "512" in err["msg"] and "model.backbone" in err["msg"]
    human = run_cli("validate", *args)
    assert human.returncode == 1 and "model.head.in_channels" in human.stderr
    assert "Traceback" not in human.stderr


def test_validate_a_finetune_spec_before_its_checkpoint_exists(tmp_path):
    spec = str(SPECS / "vit-tiny_digits_finetune.toml")
    missing = tmp_path / "not-yet.safetensors"
    args = [spec, "--set", f"model.backbone.init.0.checkpoint='{missing}'"]
    strict = run_cli("validate", *args)
    assert strict.returncode == 1 and "does not exist" in strict.stderr and "--no-file-checks" in strict.stderr
    relaxed = run_cli("validate", *args, "--no-file-checks", "--json")
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert json.loads(relaxed.stdout)["ok"] is True


def test_validate_many_errors_and_debug_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[model]\ntype = "ImageClassifier"\n[model.backbone]\ntype = "ResNet_CIFAR"\ndepht = 18\n'
        '[model.head]\ntype = "LinearClsHead"\nnum_classes = 0\nin_channels = 512\n'
    )
    res = run_cli("validate", str(bad), "--json")
    locs = {e["loc"] for e in json.loads(res.stdout)["errors"]}
    assert {"model.backbone.depht", "model.head.num_classes"} <= locs
    plain = run_cli("validate", str(bad))
    assert "did you mean 'depth'" in plain.stderr and "Traceback" not in plain.stderr
    debug = run_cli("--debug", "validate", str(bad))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_describe_human_and_json():
    res = run_cli("describe", "LinearClsHead")
    assert res.returncode == 0, res.stderr
    assert "num_classes" in res.stdout and "in_channels" in res.stdout
    schema = json.loads(run_cli("describe", "ResNet", "--json").stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["depth"]["enum"] == [18, 34, 50, 101, 152]
    assert schema["required"][0] == "type" and schema["additionalProperties"] is False
    res = run_cli("describe", "ResNot")
    assert res.returncode == 1 and "did you mean ResNet" in res.stderr


def test_schema_is_valid_and_validates_specs(tmp_path):
    out = tmp_path / "schema.json"
    res = run_cli("schema", "-o", str(out))
    assert res.returncode == 0, res.stderr
    schema = json.loads(out.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    import tomllib

    for spec in sorted(SPECS.glob("*.toml")):  # every example, training tables included
        data = tomllib.loads(spec.read_text())
        data.pop("extends", None)
        if "model" in data:
            assert list(validator.iter_errors(data)) == [], spec.name
    seed = json.loads((SPECS / "seed_tutorial.json").read_text())
    assert list(validator.iter_errors(seed)) == []
    seed["model"]["backbone"]["depth"] = 19
    assert list(validator.iter_errors(seed))
    seed["model"]["backbone"]["depth"] = 18
    seed["model"]["head"]["nmu_classes"] = 3
    assert list(validator.iter_errors(seed))


def test_list_components_human_table():
    res = run_cli("list-components", "--kind", "backbone")
    assert res.returncode == 0
    assert "ResNet_CIFAR" in res.stdout and "pretrain" in res.stdout
