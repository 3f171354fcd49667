"""Linear-probe accuracy of a self-supervised tiny encoder vs the same probe on a random backbone.

MAE by default; ``--pretrain-spec``/``--probe-spec`` measure another algorithm the same way
(MaskFeat with the ViT probe, SimMIM with ``swin-tiny_digits_linear_probe.toml``).

Protocol (everything through the public ``pretrain train`` CLI):

1. MAE pretraining: ``examples/specs/mae_vit-tiny_digits.toml`` on the digits
   ``train`` split (labels unused), unless ``--mae-weights`` gives a checkpoint.
2. Linear probe: ``examples/specs/vit-tiny_digits_linear_probe.toml`` (backbone
   frozen, ``frozen_stages = num_layers``; only the linear head trains), run twice
   per seed with identical data, epochs, optimizer and schedule:

   * ``mae``: the backbone loaded from the MAE checkpoint (the spec's ``Pretrained`` rule);
   * ``random``: the same spec without the ``Pretrained`` rule (the ViT's own init).

Reported: val top-1 (percent, 359 images) after the last probe epoch, mean ± std
over seeds, and the best epoch's (optimistic: picked on val). MAE pretraining wall
time and its first/last epoch loss are printed too.

Usage::

    python bench/linear_probe.py                      # pretrain, then probe (seeds 0 1 2)
    python bench/linear_probe.py --mae-weights runs/mae_vit-tiny_digits/checkpoints/last.safetensors
    python bench/linear_probe.py --mae-set train.epochs=60 --probe-epochs 50 --json
    python bench/linear_probe.py --finetune           # also fine-tune both ways (same seeds)
    python bench/linear_probe.py --pretrain-spec examples/specs/maskfeat_vit-tiny_digits.toml
    python bench/linear_probe.py --pretrain-spec examples/specs/simmim_swin-tiny_digits.toml \
        --probe-spec examples/specs/swin-tiny_digits_linear_probe.toml

About 4 minutes on 2 idle CPU cores with the defaults (8 with --finetune); measured
results are in docs/selfsup.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MAE_SPEC = ROOT / "examples" / "specs" / "mae_vit-tiny_digits.toml"
PROBE_SPEC = ROOT / "examples" / "specs" / "vit-tiny_digits_linear_probe.toml"
FINETUNE_SPEC = ROOT / "examples" / "specs" / "vit-tiny_digits_finetune.toml"
PRETRAIN = [sys.executable, "-m", "pretrain"]


def train(
    spec: Path, run_dir: Path, overrides: list[str], seed: int | None = None
) -> tuple[list[dict[str, Any]], float]:
    """``pretrain train`` in a subprocess; returns (metrics.jsonl records, wall seconds)."""
    cmd = [*PRETRAIN, "train", str(spec), "--run-dir", str(run_dir), "--plain"]
    for item in overrides:
        cmd += ["--set", item]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()], wall


def transfer_spec(source: Path, work: Path, weights: Path | None) -> Path:
    """``source`` as JSON: the backbone from the MAE checkpoint ``weights``, or no Pretrained rule."""
    from pretrain import load_spec

    raw = load_spec(str(source))
    backbone = raw["model"]["backbone"]
    if weights is None:
        backbone.pop("init", None)
        path = work / f"{source.stem}_random.json"
    else:
        # Pretraining-only tensors (MaskFeat's/SimMIM's mask token) are dropped on load.
        backbone["init"] = [{"type": "Pretrained", "checkpoint": str(weights.resolve()), "prefix": "backbone.",
                             "key_map": [[r"^backbone\.mask_token$", ""]]}]
        path = work / f"{source.stem}_mae.json"
    path.write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return path


def summary(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:6.2f} ± {std:4.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mae-weights", type=Path, help="reuse this pretrained checkpoint (skip pretraining)")
    parser.add_argument("--pretrain-spec", type=Path, default=MAE_SPEC,
                        help="self-supervised spec to pretrain with (default: the MAE digits spec)")
    parser.add_argument("--probe-spec", type=Path, default=PROBE_SPEC,
                        help="linear-probe spec whose backbone takes the pretrained weights")
    parser.add_argument("--mae-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override in the MAE spec (e.g. train.epochs=60)")
    parser.add_argument("--probe-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override in the probe spec, applied to both arms")
    parser.add_argument("--probe-epochs", type=int, default=None, help="probe epochs (default: the spec's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="probe seeds")
    parser.add_argument("--finetune", action="store_true",
                        help="also fine-tune (vit-tiny_digits_finetune.toml) both ways, same seeds")
    parser.add_argument("--work-dir", type=Path, help="keep runs here (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pretrain-linear-probe-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {"seeds": args.seeds}
        if args.mae_weights is None:
            history, wall = train(args.pretrain_spec, work / "mae", args.mae_set)
            weights = work / "mae" / "checkpoints" / "last.safetensors"
            result["mae"] = {
                "wall_s": round(wall, 1), "epochs": len(history),
                "first_epoch_loss": history[0]["train_loss"], "last_epoch_loss": history[-1]["train_loss"],
                "train_time_s": round(sum(r["epoch_time_s"] for r in history), 1),
            }
            print(f"{args.pretrain_spec.stem} pretraining: {len(history)} epochs in {wall:.1f} s wall "
                  f"({result['mae']['train_time_s']:.1f} s in epochs); reconstruction loss "
                  f"{history[0]['train_loss']:.4f} (epoch 1) -> {history[-1]['train_loss']:.4f} "
                  f"(epoch {len(history)})", file=sys.stderr)
        else:
            weights = args.mae_weights
            result["mae"] = {"weights": str(weights)}
        overrides = list(args.probe_set)
        if args.probe_epochs is not None:
            overrides.append(f"train.epochs={args.probe_epochs}")
        result["probe"] = compare("probe", args.probe_spec, work, weights, args.seeds, overrides)
        if args.finetune:
            result["finetune"] = compare("finetune", FINETUNE_SPEC, work, weights, args.seeds, [])
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for key, title in (("probe", "linear probe"), ("finetune", "fine-tuning")):
        if key not in result:
            continue
        res = result[key]
        print(f"\n{title} on digits val (359 images), {res['epochs']} epochs, seeds {args.seeds}")
        print(f"{'backbone':<22}{'final top-1 %':>16}{'best top-1 %':>16}")
        for name, label in (("mae", "pretrained"), ("random", "random init")):
            print(f"{label:<22}{summary(res[name]['final']):>16}{summary(res[name]['best']):>16}")
    return 0


def compare(
    label: str, source: Path, work: Path, weights: Path, seeds: list[int], overrides: list[str]
) -> dict[str, Any]:
    """Train ``source`` with the MAE backbone and with a random one, per seed; val top-1 per run."""
    specs = {"mae": transfer_spec(source, work, weights), "random": transfer_spec(source, work, None)}
    arms: dict[str, dict[str, list[float]]] = {name: {"final": [], "best": []} for name in specs}
    start, epochs = time.perf_counter(), 0
    for seed in seeds:
        for name, spec in specs.items():
            history, wall = train(spec, work / f"{label}_{name}_{seed}", overrides, seed=seed)
            final = history[-1]["accuracy/top1"]
            best = max(r["accuracy/top1"] for r in history if "accuracy/top1" in r)
            arms[name]["final"].append(final)
            arms[name]["best"].append(best)
            epochs = len(history)
            print(f"{label} {name:6s} seed {seed}: val top-1 {final:.2f} (best {best:.2f}) "
                  f"in {wall:.1f} s", file=sys.stderr)
    return {
        "epochs": epochs, "wall_s": round(time.perf_counter() - start, 1),
        **{name: {k: [round(v, 2) for v in vals] for k, vals in arm.items()} for name, arm in arms.items()},
    }


if __name__ == "__main__":
    raise SystemExit(main())
