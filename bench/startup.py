"""Whole-process start-up of the CLI, side by side with ``python -c "import torch"``.

Prints the median wall time (of N runs, interleaved) of:

- ``python -c pass`` (interpreter floor);
- ``python -c "import torch"``;
- ``pretrain --help``;
- ``pretrain list-components`` (metadata only);
- ``pretrain list-components`` with 200 synthetic plugin distributions installed;
- ``pretrain validate examples/specs/seed_tutorial.toml`` (spec validation, the meta
  build and the whole training step), and its difference to ``import torch`` measured
  in the same runs.

Targets: listing <= 0.35 s median with torch not imported; with 200 plugin
distributions <= 0.6 s (issue 2); ``validate`` of the seed spec <= ``import torch``
+ 0.5 s (issue 10). Every command runs once untimed first, so Python's bytecode
cache is warm, as in an installed package (``PYTHONDONTWRITEBYTECODE`` is cleared
for the children). Usage: ``python bench/startup.py [--runs 5] [--only validate]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRETRAIN = [sys.executable, "-m", "pretrain.cli"]
SEED_SPEC = str(Path(__file__).resolve().parents[1] / "examples" / "specs" / "seed_tutorial.toml")
TORCH = 'python -c "import torch"'
VALIDATE = "pretrain validate seed_tutorial.toml"


def make_fake_plugins(root: Path, count: int) -> None:
    """Write ``count`` installed-looking distributions, each with 3 components."""
    for i in range(count):
        name = f"bench-plugin-{i:03d}"
        info = root / f"bench_plugin_{i:03d}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(
            "[pretrain.backbones]\n"
            f"BenchNet{i} = bench_plugin_{i:03d}.models:Net\n"
            "[pretrain.heads]\n"
            f"BenchHead{i} = bench_plugin_{i:03d}.models:Head\n"
            "[pretrain.losses]\n"
            f"BenchLoss{i} = bench_plugin_{i:03d}.models:Loss\n"
        )


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall time of one run (must succeed)."""
    return timed_cpu(cmd, env)[0]


def timed_cpu(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run (must succeed).

    CPU time barely moves with the machine's load, so on a shared machine it is the
    steadier measure of the work a command does; wall time is what a user waits.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def torch_imported_by_listing(env: dict[str, str]) -> bool:
    """Run the listing in-process in a child and report whether torch got imported."""
    probe = "import sys; from pretrain.cli import main; main(['list-components']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().endswith("True")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--plugins", type=int, default=200)
    parser.add_argument("--only", choices=("all", "validate"), default="all",
                        help="validate: only import torch and validate, side by side")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["COLUMNS"] = "120"
    with tempfile.TemporaryDirectory() as tmp:
        make_fake_plugins(Path(tmp), args.plugins)
        env_many = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [tmp, env.get("PYTHONPATH")]))}
        cases = {
            "python -c pass": ([sys.executable, "-c", "pass"], env),
            TORCH: ([sys.executable, "-c", "import torch"], env),
            "pretrain --help": ([*PRETRAIN, "--help"], env),
            "pretrain list-components": ([*PRETRAIN, "list-components"], env),
            f"pretrain list-components ({args.plugins} plugin dists)": (
                [*PRETRAIN, "list-components"],
                env_many,
            ),
            VALIDATE: ([*PRETRAIN, "validate", SEED_SPEC], env),
        }
        if args.only == "validate":
            cases = {name: cases[name] for name in (TORCH, VALIDATE)}
        for cmd, case_env in cases.values():  # warm the bytecode and file caches
            timed(cmd, case_env)
        times: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):  # interleaved, so machine noise hits every case alike
            for name, (cmd, case_env) in cases.items():
                wall, used = timed_cpu(cmd, case_env)
                times[name].append(wall)
                cpu[name].append(used)
        print(f"{'command':<52} {'median s':>9} {'min s':>7} {'CPU s':>7}")
        for name, values in times.items():
            print(f"{name:<52} {statistics.median(values):>9.3f} {min(values):>7.3f} "
                  f"{statistics.median(cpu[name]):>7.3f}")
        torch_s, validate_s = statistics.median(times[TORCH]), statistics.median(times[VALIDATE])
        # Per-run differences: the run pairs share the machine's load at that moment.
        paired = statistics.median(v - t for v, t in zip(times[VALIDATE], times[TORCH], strict=True))
        cpu_diff = statistics.median(cpu[VALIDATE]) - statistics.median(cpu[TORCH])
        print(f"validate - import torch: {validate_s - torch_s:+.3f} s (medians), {paired:+.3f} s (median of "
              f"paired runs), {cpu_diff:+.3f} s CPU time; ratio {validate_s / torch_s:.2f}; target <= +0.5 s "
              f"(paired): {'met' if paired <= 0.5 else 'NOT met'}")
        if args.only == "all":
            print(f"torch imported by list-components: {torch_imported_by_listing(env)}")
            print(f"torch imported with {args.plugins} plugins: {torch_imported_by_listing(env_many)}")


if __name__ == "__main__":
    main()
