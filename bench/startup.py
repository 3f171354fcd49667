"""Whole-process start-up of the CLI, side by side with ``python -c "import torch"``.

Prints the median wall time (of N runs, interleaved) of:

- ``python -c pass`` (interpreter floor);
- ``python -c "import torch"``;
- ``pretrain --help``;
- ``pretrain list-components`` (metadata only);
- ``pretrain list-components`` with 200 synthetic plugin distributions installed.

Targets (issue 2): listing <= 0.35 s median with torch not imported; with 200
plugin distributions <= 0.6 s. Usage: ``python bench/startup.py [--runs 7]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRETRAIN = [sys.executable, "-m", "pretrain.cli"]


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
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def torch_imported_by_listing(env: dict[str, str]) -> bool:
    """Run the listing in-process in a child and report whether torch got imported."""
    probe = "import sys; from pretrain.cli import main; main(['list-components']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().endswith("True")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--plugins", type=int, default=200)
    args = parser.parse_args()
    env = {**os.environ, "COLUMNS": "120"}
    with tempfile.TemporaryDirectory() as tmp:
        make_fake_plugins(Path(tmp), args.plugins)
        env_many = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [tmp, env.get("PYTHONPATH")]))}
        cases = {
            "python -c pass": ([sys.executable, "-c", "pass"], env),
            'python -c "import torch"': ([sys.executable, "-c", "import torch"], env),
            "pretrain --help": ([*PRETRAIN, "--help"], env),
            "pretrain list-components": ([*PRETRAIN, "list-components"], env),
            f"pretrain list-components ({args.plugins} plugin dists)": (
                [*PRETRAIN, "list-components"],
                env_many,
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):  # interleaved, so machine noise hits every case alike
            for name, (cmd, case_env) in cases.items():
                times[name].append(timed(cmd, case_env))
        print(f"{'command':<52} {'median s':>9} {'min s':>7}")
        for name, values in times.items():
            print(f"{name:<52} {statistics.median(values):>9.3f} {min(values):>7.3f}")
        print(f"torch imported by list-components: {torch_imported_by_listing(env)}")
        print(f"torch imported with {args.plugins} plugins: {torch_imported_by_listing(env_many)}")


if __name__ == "__main__":
    main()
