"""``pretrain train SPEC``: train a spec's model; the run directory keeps everything."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from pretrain.cli._validate import add_spec_arguments

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "train",
        help="train a model from a spec (CPU, CUDA, or several GPUs under torchrun)",
        description=(
            "Train the spec's model on its [data] with its [train] settings. The run directory "
            "receives the resolved spec (spec.toml), metrics.jsonl (one line per epoch), "
            "curves.png and checkpoints/ (last/best weights as safetensors). Under torchrun "
            "every process trains a shard (DDP); only rank 0 writes."
        ),
    )
    add_spec_arguments(p)
    p.add_argument("--run-dir", metavar="DIR",
                   help="run directory (default: runs/<spec file name without suffix>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("--device", metavar="D",
                   help="auto, cpu, cuda or cuda:N (default: the spec's train.device)")
    p.add_argument("--seed", type=int, metavar="S",
                   help="seed of init, data order and augmentation (sets train.seed)")
    live = p.add_mutually_exclusive_group()
    live.add_argument("--live", dest="live", action="store_true", default=None,
                      help="rich live progress bar even when stderr is not a terminal")
    live.add_argument("--plain", dest="live", action="store_false",
                      help="plain log lines even on a terminal")
    p.set_defaults(run=run)


def _changed_tables(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    if old is None:
        return []
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def run(args: argparse.Namespace) -> int:
    """Train: validate (shapes included) before anything is created, then run ``pretrain.train``."""
    from pretrain.cli._console import console, err_console, note_broken_plugins
    from pretrain.engine.api import default_run_dir, prepare_spec, train
    from pretrain.engine.rundir import RunDir

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    spec = prepare_spec(args.spec, overrides)
    note_broken_plugins()
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.spec)
    if args.resume:
        changed = _changed_tables(RunDir(run_dir).read_spec(), spec.raw)
        if changed:
            err_console.print(
                f"[yellow]warning:[/] resuming with a spec that differs from {run_dir}/spec.toml "
                f"in: {', '.join(changed)} (the new values apply from here on)"
            )
    t0 = time.perf_counter()
    record = train(spec, run_dir=run_dir, resume=args.resume, device=args.device,
                   console=err_console, live=args.live)
    if _is_main_process():
        _summary(console, RunDir(run_dir), record, time.perf_counter() - t0)
    return 0


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _weights(rd: Any) -> Any:
    """The run's best (else last) weights: a file, or a sharded checkpoint's index (FSDP)."""
    from pretrain.errors import PretrainError

    try:
        return rd.weights("best")
    except PretrainError:
        return rd.last_weights


def _summary(console: Any, rd: Any, record: dict[str, Any], wall: float) -> None:
    import json

    metrics = ", ".join(
        f"{k} {v:.4g}" if k == "val_loss" else f"{k} {v:.2f}"
        for k, v in record.items()
        if k.startswith(("accuracy/", "knn/", "retrieval/")) or k == "val_loss"
    )
    best = ""
    try:
        info = json.loads(rd.last_json.read_text(encoding="utf-8"))
        if info.get("best") is not None:
            best = f" (best {info['best_metric']} {info['best']:.4g} at epoch {info['best_epoch']})"
    except (OSError, ValueError, KeyError):
        info = {}
    console.print(
        f"[bold green]done[/] in {wall:.1f} s: epoch {record.get('epoch', '?')}, step {record.get('step', '?')}, "
        f"train_loss {record.get('train_loss', float('nan')):.4f}"
        f"{', ' + metrics if metrics else ''}{best}\n"
        f"  weights: {_weights(rd)}\n"
        f"  metrics: {rd.metrics_file}   curves: {rd.plot_file}",
        highlight=False,
    )
