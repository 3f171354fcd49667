"""Self-supervised pretraining on the digits: kNN (and linear probe) vs the same backbone at random init.

Protocol (everything through the public ``pretrain train`` / ``pretrain eval`` CLI):

1. Pretrain each algorithm with its digits spec (``examples/specs/<algo>_vit-tiny_digits.toml``:
   the 4-layer, 128-wide ViT of the MAE example; ``simmim_swin-tiny_digits.toml``: a
   4-stage, 32-wide Swin), once per seed, labels unused. Every recipe is the spec as
   committed, the same for every seed; ``--pretrain-set`` changes it for all of them.
2. kNN top-1: ``pretrain eval SPEC --weights W`` with the spec's ``[eval] knn`` (weighted kNN,
   k = 20, T = 0.07, cosine similarity of the backbone's features: the ViT's cls token,
   the Swin's pooled last map; the 1,438 clean ``train`` images vote for each of the 359
   clean ``val`` images). Two arms per seed, scored by the same command: ``W`` = the
   pretraining's ``last.safetensors``, and ``W`` = the same model built with the same seed
   and never trained (random init).
3. ``--linear-probe``: the frozen-backbone linear probe (``vit-tiny_digits_linear_probe.toml``
   or ``swin-tiny_digits_linear_probe.toml``, 30 epochs, only the linear head trains), the
   backbone loaded from each of the two weight files above, probe seed = pretraining seed.

Reported per algorithm: mean ± std over the seeds of kNN top-1 (pretrained, random, and
their difference), linear-probe top-1 after the last probe epoch (if asked), the
pretraining wall time per seed and the first/last epoch loss. "beats random" says
whether the mean gain is larger than the spread (std pretrained + std random).
The figures are taken after the last epoch; nothing is picked on the validation set.

Usage::

    python bench/selfsup.py --jobs 2                      # all eight, seeds 0 1 2, 2 runs at a time
    python bench/selfsup.py --algos byol simsiam --seeds 0 --pretrain-set train.epochs=10
    python bench/selfsup.py --linear-probe --json

Each run uses one thread (``train.cpu_threads = 1``) and evaluates during training only every
10 epochs (``train.eval_every_epochs = 10``; ``--pretrain-set`` overrides both); ``--jobs 2``
runs two at once on a 2-core machine. Measured figures and wall times are in docs/selfsup.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "examples" / "specs"
VIT_PROBE = SPECS / "vit-tiny_digits_linear_probe.toml"
SWIN_PROBE = SPECS / "swin-tiny_digits_linear_probe.toml"
PRETRAIN = [sys.executable, "-m", "pretrain"]


@dataclass(frozen=True)
class Algo:
    """One algorithm of the benchmark: its digits pretraining spec and the linear probe that fits it."""

    spec: Path
    probe: Path


ALGOS: dict[str, Algo] = {
    name: Algo(SPECS / f"{name}_vit-tiny_digits.toml", VIT_PROBE)
    for name in ("simclr", "mocov2", "mocov3", "byol", "simsiam", "barlowtwins", "maskfeat")
}
ALGOS["simmim"] = Algo(SPECS / "simmim_swin-tiny_digits.toml", SWIN_PROBE)


def run(cmd: list[str]) -> tuple[str, float]:
    """Run ``cmd``; returns (stdout, wall seconds). Exits with its stderr if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc.stdout, wall


def sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def train(spec: Path, run_dir: Path, overrides: list[str], seed: int) -> tuple[list[dict[str, Any]], float]:
    """``pretrain train`` in a subprocess; returns (metrics.jsonl records, wall seconds)."""
    _, wall = run([*PRETRAIN, "train", str(spec), "--run-dir", str(run_dir), "--plain", "--seed", str(seed),
                   *sets(overrides)])
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()], wall


def knn_top1(spec: Path, weights: Path, overrides: list[str]) -> float:
    """``pretrain eval SPEC --weights W --json``'s ``knn/top1`` (the spec's ``[eval] knn``)."""
    out, _ = run([*PRETRAIN, "eval", str(spec), "--weights", str(weights), "--json", *sets(overrides)])
    return float(json.loads(out)["knn/top1"])


def random_weights(spec: Path, overrides: list[str], seed: int, path: Path) -> Path:
    """The spec's model built with ``seed`` and never trained, saved as a weights file."""
    import torch

    import pretrain
    from pretrain.engine.checkpoint import save_tensors

    torch.set_num_threads(1)
    model = pretrain.build(str(spec), overrides=overrides, seed=seed)
    save_tensors(path, model.state_dict(), {"pretrain.random_init_seed": str(seed)})
    return path


def backbone_digest(weights: Path) -> str:
    """Hash of the ``backbone.*`` tensors: probes of identical backbones run once."""
    from pretrain.engine.checkpoint import load_tensors

    tensors, _ = load_tensors(weights)
    digest = hashlib.sha256()
    for key in sorted(k for k in tensors if k.startswith("backbone.")):
        digest.update(key.encode())
        digest.update(tensors[key].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def probe_spec(probe: Path, weights: Path, path: Path) -> Path:
    """The linear-probe spec as JSON, its backbone loaded from ``weights`` (``backbone.*`` keys)."""
    from pretrain import load_spec

    raw = load_spec(str(probe))
    # Pretraining-only tensors (MaskFeat's/SimMIM's mask token) are dropped on load.
    raw["model"]["backbone"]["init"] = [{"type": "Pretrained", "checkpoint": str(weights.resolve()),
                                         "prefix": "backbone.", "key_map": [[r"^backbone\.mask_token$", ""]]}]
    path.write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return path


def linear_probe(probe: Path, weights: Path, work: Path, tag: str, seed: int, overrides: list[str]) -> float:
    """Val top-1 after the last epoch of the frozen-backbone linear probe."""
    spec = probe_spec(probe, weights, work / f"probe_{tag}.json")
    history, _ = train(spec, work / f"probe_{tag}", ["train.cpu_threads=1", *overrides], seed)
    return float(history[-1]["accuracy/top1"])


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean, std = mean_std(values)
    return f"{mean:6.2f} ± {std:4.2f}"


def verdict(pre: list[float], rand: list[float]) -> str:
    """``yes`` when the mean gain exceeds the spread (std pretrained + std random)."""
    (mp, sp), (mr, sr) = mean_std(pre), mean_std(rand)
    return "yes" if mp - mr > sp + sr else "no"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pretraining seeds")
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override in every pretraining spec (e.g. train.epochs=10)")
    parser.add_argument("--linear-probe", action="store_true", help="also run the linear probe on both arms")
    parser.add_argument("--probe-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override in the linear-probe spec (both arms)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses one thread)")
    parser.add_argument("--work-dir", type=Path, help="keep runs here (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    # Training-time evaluation only every 10 epochs (and after the last): the reported figures
    # come from `pretrain eval` on the final weights, and per-epoch kNN + val_loss would add
    # about a third to each pretraining's wall time.
    over = ["train.cpu_threads=1", "train.eval_every_epochs=10", *args.pretrain_set]

    with tempfile.TemporaryDirectory(prefix="pretrain-selfsup-") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        runs = [(name, s) for name in args.algos for s in args.seeds]
        pre_jobs = {(name, s): pool.submit(train, ALGOS[name].spec, work / f"{name}_{s}", over, s)
                    for name, s in runs}
        results: dict[str, dict[str, Any]] = {
            name: {"wall_s": [], "first_loss": [], "last_loss": [], "epochs": 0,
                   "knn": {"pretrained": [], "random": []}, "probe": {"pretrained": [], "random": []}}
            for name in args.algos
        }
        weights: dict[tuple[str, int], dict[str, Path]] = {}
        for name, s in runs:
            random_path = work / f"{name}_{s}_random.safetensors"
            weights[name, s] = {"random": random_weights(ALGOS[name].spec, over, s, random_path)}
        for (name, s), job in pre_jobs.items():
            history, wall = job.result()
            entry = results[name]
            entry["wall_s"].append(round(wall, 1))
            entry["first_loss"].append(round(history[0]["train_loss"], 4))
            entry["last_loss"].append(round(history[-1]["train_loss"], 4))
            entry["epochs"] = len(history)
            weights[name, s]["pretrained"] = work / f"{name}_{s}" / "checkpoints" / "last.safetensors"
            print(f"{name} seed {s}: {len(history)} epochs in {wall:.1f} s, loss {history[0]['train_loss']:.4f} "
                  f"-> {history[-1]['train_loss']:.4f}, training-time knn/top1 "
                  f"{history[-1].get('knn/top1', float('nan')):.2f}", file=sys.stderr)
        knn_jobs = {(name, s, arm): pool.submit(knn_top1, ALGOS[name].spec, w, over)
                    for (name, s), arms in weights.items() for arm, w in arms.items()}
        probe_jobs: dict[tuple[str, int, str], Future[float]] = {}
        if args.linear_probe:
            seen: dict[str, Future[float]] = {}
            for (name, s), arms in weights.items():
                for arm, w in arms.items():
                    key = f"{ALGOS[name].probe.stem}_{backbone_digest(w)}_{s}"
                    if key not in seen:
                        seen[key] = pool.submit(linear_probe, ALGOS[name].probe, w, work, key, s, args.probe_set)
                    probe_jobs[name, s, arm] = seen[key]
        for (name, s, arm), job in knn_jobs.items():
            results[name]["knn"][arm].append(round(job.result(), 2))
            print(f"kNN {name:12s} seed {s} {arm:10s}: {results[name]['knn'][arm][-1]:.2f}", file=sys.stderr)
        for (name, s, arm), job in probe_jobs.items():
            results[name]["probe"][arm].append(round(job.result(), 2))
            print(f"probe {name:10s} seed {s} {arm:10s}: {results[name]['probe'][arm][-1]:.2f}", file=sys.stderr)
        total = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps({"seeds": args.seeds, "pretrain_set": over, "results": results, "wall_s": total}, indent=2))
        return 0
    print(f"\ndigits val (359 images), kNN k=20 T=0.07 against the 1,438 train images; seeds {args.seeds}; "
          "mean ± std over seeds, after the last epoch")
    head = (f"{'algorithm':<12}{'kNN pretrained':>16}{'kNN random':>16}{'gain':>8}{'beats':>7}"
            f"{'probe pretrained':>18}{'probe random':>16}{'pretrain s':>12}{'loss first -> last':>22}")
    print(head)
    for name in args.algos:
        r = results[name]
        gain = mean_std(r["knn"]["pretrained"])[0] - mean_std(r["knn"]["random"])[0]
        loss = f"{statistics.fmean(r['first_loss']):.3f} -> {statistics.fmean(r['last_loss']):.3f}"
        print(f"{name:<12}{fmt(r['knn']['pretrained']):>16}{fmt(r['knn']['random']):>16}{gain:>+8.2f}"
              f"{verdict(r['knn']['pretrained'], r['knn']['random']):>7}{fmt(r['probe']['pretrained']):>18}"
              f"{fmt(r['probe']['random']):>16}{statistics.fmean(r['wall_s']):>12.0f}{loss:>22}")
    print(f"\ntotal wall time {total:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
