"""Contrastive and siamese pretraining on the digits: linear probe vs a random-init backbone.

Protocol (everything through the public ``pretrain train`` CLI):

1. Pretrain each algorithm with its digits spec
   (``examples/specs/<algo>_vit-tiny_digits.toml``: the 4-layer, 128-wide ViT of the
   MAE example, labels unused), once per seed. The probe on frozen features is nearly
   deterministic, so the spread over seeds comes from the pretraining;
   ``--pretrain-once`` pretrains with the first seed only (quicker, smaller spread).
2. Linear probe: ``examples/specs/vit-tiny_digits_linear_probe.toml`` (backbone frozen,
   only the linear head trains) with the backbone from the pretraining checkpoint
   (``last.safetensors``, prefix ``backbone.``), and the same probe on a randomly
   initialised backbone, for every seed.

Reported: digits val top-1 (percent, 359 images) after the last probe epoch, mean ± std
over the seeds, per algorithm and for the random backbone, with the pretraining wall
time and first/last epoch loss. kNN evaluation comes with the retrieval issue.

Usage::

    python bench/selfsup.py --jobs 2                          # all six, seeds 0 1 2, 2 runs at a time
    python bench/selfsup.py --algos byol simsiam --pretrain-set train.epochs=10
    python bench/selfsup.py --pretrain-once                   # one pretraining per algorithm
    python bench/selfsup.py --json

Each pretraining runs one thread (``train.cpu_threads = 1``); ``--jobs 2`` runs two at
once on a 2-core machine. Measured figures and wall times are in docs/selfsup.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "examples" / "specs"
PROBE_SPEC = SPECS / "vit-tiny_digits_linear_probe.toml"
ALGOS = ("simclr", "mocov2", "mocov3", "byol", "simsiam", "barlowtwins")
PRETRAIN = [sys.executable, "-m", "pretrain"]


def train(spec: Path, run_dir: Path, overrides: list[str], seed: int) -> tuple[list[dict[str, Any]], float]:
    """``pretrain train`` in a subprocess; returns (metrics.jsonl records, wall seconds)."""
    cmd = [*PRETRAIN, "train", str(spec), "--run-dir", str(run_dir), "--plain", "--seed", str(seed)]
    for item in overrides:
        cmd += ["--set", item]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()], wall


def probe_spec(work: Path, weights: Path | None, tag: str) -> Path:
    """The probe spec as JSON with the backbone from ``weights`` (None: random init)."""
    from pretrain import load_spec

    raw = load_spec(str(PROBE_SPEC))
    backbone = raw["model"]["backbone"]
    backbone.pop("init", None)
    if weights is not None:
        backbone["init"] = [{"type": "Pretrained", "checkpoint": str(weights.resolve()), "prefix": "backbone."}]
    path = work / f"probe_{tag}.json"
    path.write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return path


def summary(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:6.2f} ± {std:4.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="probe seeds")
    parser.add_argument("--pretrain-once", action="store_true",
                        help="pretrain with the first seed only; every probe seed uses that checkpoint")
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override in every pretraining spec (e.g. train.epochs=10)")
    parser.add_argument("--probe-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override in the probe spec (both arms)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses one thread)")
    parser.add_argument("--work-dir", type=Path, help="keep runs here (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    pre_seeds = args.seeds[:1] if args.pretrain_once else list(args.seeds)
    probe_over = ["train.cpu_threads=1", *args.probe_set]

    with tempfile.TemporaryDirectory(prefix="pretrain-selfsup-") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        jobs = {(algo, s): pool.submit(train, SPECS / f"{algo}_vit-tiny_digits.toml", work / f"{algo}_{s}",
                                       args.pretrain_set, s)
                for algo in args.algos for s in pre_seeds}
        pretrain: dict[str, Any] = {}
        for (algo, s), job in jobs.items():
            history, wall = job.result()
            entry = pretrain.setdefault(algo, {"wall_s": [], "first_loss": [], "last_loss": [], "epochs": 0})
            entry["wall_s"].append(round(wall, 1))
            entry["first_loss"].append(round(history[0]["train_loss"], 4))
            entry["last_loss"].append(round(history[-1]["train_loss"], 4))
            entry["epochs"] = len(history)
            print(f"{algo} seed {s}: {len(history)} epochs in {wall:.1f} s, loss {history[0]['train_loss']:.4f} "
                  f"-> {history[-1]['train_loss']:.4f}", file=sys.stderr)
        arms: dict[str, Any] = {}
        for i, seed in enumerate(args.seeds):
            pre = pre_seeds[i % len(pre_seeds)]
            specs = {"random": probe_spec(work, None, "random")}
            specs.update({algo: probe_spec(work, work / f"{algo}_{pre}" / "checkpoints" / "last.safetensors",
                                           f"{algo}_{pre}") for algo in args.algos})
            probes = {name: pool.submit(train, spec, work / f"probe_{name}_{seed}", probe_over, seed)
                      for name, spec in specs.items()}
            for name, job in probes.items():
                history, wall = job.result()
                arms.setdefault(name, []).append(history[-1]["accuracy/top1"])
                print(f"probe {name:12s} seed {seed}: val top-1 {history[-1]['accuracy/top1']:.2f} "
                      f"in {wall:.1f} s", file=sys.stderr)
        result = {"seeds": args.seeds, "pretrain_seeds": pre_seeds, "pretrain": pretrain,
                  "probe_top1": {k: [round(v, 2) for v in vals] for k, vals in arms.items()},
                  "wall_s": round(time.perf_counter() - start, 1)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"\nlinear probe on digits val (359 images), probe seeds {args.seeds}, pretraining seeds {pre_seeds}")
    print(f"{'backbone':<14}{'top-1 % (mean ± std)':>22}{'pretrain s':>12}{'loss first -> last':>26}")
    print(f"{'random init':<14}{summary(arms['random']):>22}")
    for algo in args.algos:
        p = pretrain[algo]
        loss = f"{statistics.fmean(p['first_loss']):.4f} -> {statistics.fmean(p['last_loss']):.4f}"
        print(f"{algo:<14}{summary(arms[algo]):>22}{statistics.fmean(p['wall_s']):>12.1f}{loss:>26}")
    print(f"\ntotal wall time {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
