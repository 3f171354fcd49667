"""What ``--resume`` needs, saved and restored as one safetensors file (``last.state.safetensors``).

The state file holds the raw model weights (``model.*``), the EMA weights
(``ema.*``), optimizer tensors (``optim.<param>.<name>``), the RNG states of every
rank (``rng.<rank>.<generator>``) and a JSON document (counters, optimizer groups,
GradScaler state, metric history) in its metadata; see :mod:`pretrain.engine.checkpoint`
for the file format and its atomic, checksummed writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pretrain.assembly.weights_file import check_tensors
from pretrain.engine import checkpoint as ckpt
from pretrain.engine.ema import ModelEMA
from pretrain.engine.rundir import RunDir
from pretrain.engine.sharded import is_sharded, load_sharded, read_index, write_index, write_shard

__all__ = [
    "STATE_FORMAT",
    "RunState",
    "describe_last_checkpoint",
    "load_weights",
    "read_state",
    "read_state_doc",
    "write_checkpoint",
    "write_sharded_checkpoint",
    "write_state",
]

STATE_FORMAT = "pretrain.state/1"


@dataclass
class RunState:
    """Counters saved in every checkpoint (JSON)."""

    seed: int = 0
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps done, whole run
    step_in_epoch: int = 0  # optimizer steps done in the unfinished epoch
    loss_sum: float = 0.0  # sum of this epoch's step losses (mean over ranks)
    loss_count: int = 0
    best: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def update_best(self, value: float | None, mode: str, epoch: int) -> bool:
        """Record ``value`` of ``epoch`` if it beats the best so far (``mode`` max/min); return whether."""
        if value is None or not (self.best is None or (value > self.best if mode == "max" else value < self.best)):
            return False
        self.best, self.best_epoch = value, epoch
        return True


def write_state(
    path: Path, *, state: RunState, model: nn.Module, ema: ModelEMA | None,
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    rngs: Sequence[Mapping[str, Tensor]], steps_per_epoch: int, total_steps: int,
) -> None:
    """Write everything a resumed run needs to ``path`` (atomically, with a checksum)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_tensors, opt_doc = ckpt.flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    for rank, states in enumerate(rngs):
        tensors.update({f"rng.{rank}.{k}": v for k, v in states.items()})
    doc = {
        "format": STATE_FORMAT, "state": asdict(state), "optimizer": opt_doc,
        "scaler": scaler.state_dict(), "world_size": len(rngs),
        "ema_updates": ema.updates if ema is not None else 0,
        "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
    }
    ckpt.save_tensors(path, tensors, {"pretrain.state": ckpt.dumps(doc)})


def write_checkpoint(
    run: RunDir, *, best: bool, record: Mapping[str, Any], state: RunState, model: nn.Module,
    ema: ModelEMA | None, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    rngs: Sequence[Mapping[str, Tensor]], steps_per_epoch: int, total_steps: int, best_metric: str,
    spec_raw: Mapping[str, Any],
) -> None:
    """Write the state file, ``last`` (and ``best``) weights and ``last.json`` of ``run`` (rank 0).

    The weights files hold what is evaluated: the EMA's when the run evaluates one.
    """
    write_state(run.state_file, state=state, model=model, ema=ema, optimizer=optimizer, scaler=scaler,
                rngs=rngs, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    evaluated = ema is not None and ema.cfg.evaluate
    weights = ema.state_dict() if ema is not None and evaluated else model.state_dict()
    source = "ema" if evaluated else "model"
    meta = {"format": "pretrain.weights/1", "epoch": str(state.epoch), "step": str(state.step),
            "weights": source, "metrics": ckpt.dumps(record), "spec": ckpt.dumps(spec_raw)}
    ckpt.save_tensors(run.last_weights, weights, meta)
    if best:
        ckpt.save_tensors(run.best_weights, weights, meta)
    info = {"epoch": state.epoch, "step": state.step, "step_in_epoch": state.step_in_epoch,
            "best": state.best, "best_epoch": state.best_epoch, "best_metric": best_metric,
            "weights": source, "metrics": dict(record)}
    ckpt.atomic_write_bytes(run.last_json, ckpt.dumps(info).encode())


def write_sharded_checkpoint(
    run: RunDir, *, rank: int, world_size: int, best: bool, record: Mapping[str, Any], state: RunState,
    model: nn.Module, optimizer: torch.optim.Optimizer, rng: Mapping[str, Tensor], steps_per_epoch: int,
    total_steps: int, best_metric: str, spec_raw: Mapping[str, Any], barrier: Callable[[], None],
) -> None:
    """Every rank writes its shard of the state and of the weights; rank 0 then writes the indexes.

    The same files as :func:`write_checkpoint`, each split into one safetensors file per
    rank plus a ``*.index.json`` (see :mod:`pretrain.engine.sharded`).
    """
    step = state.step
    tensors: dict[str, Any] = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_doc = ckpt.flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors.update({f"rng.{rank}.{k}": v for k, v in rng.items()})
    doc = {"format": STATE_FORMAT, "state": asdict(state), "optimizer": opt_doc, "scaler": {},
           "world_size": world_size, "ema_updates": 0, "steps_per_epoch": steps_per_epoch,
           "total_steps": total_steps}
    state_meta = {"pretrain.state": ckpt.dumps(doc)}
    write_shard(run.shard_file("last.state", rank, world_size), tensors, state_meta, rank=rank,
                world_size=world_size, step=step)
    meta = {"format": "pretrain.weights/1", "epoch": str(state.epoch), "step": str(step), "weights": "model",
            "metrics": ckpt.dumps(record), "spec": ckpt.dumps(spec_raw)}
    names: list[Any] = ["last", "best"] if best else ["last"]
    weights = model.state_dict()
    for name in names:
        write_shard(run.shard_file(name, rank, world_size), weights, meta, rank=rank, world_size=world_size,
                    step=step)
    barrier()  # every shard is on disk before an index points at it
    if rank == 0:
        for name in [*names, "last.state"]:
            files = [run.shard_file(name, r, world_size) for r in range(world_size)]
            write_index(run.shard_index(name), files, step=step,
                        metadata=state_meta if name == "last.state" else meta)
        info = {"epoch": state.epoch, "step": step, "step_in_epoch": state.step_in_epoch, "best": state.best,
                "best_epoch": state.best_epoch, "best_metric": best_metric, "weights": "model",
                "sharded": world_size, "metrics": dict(record)}
        ckpt.atomic_write_bytes(run.last_json, ckpt.dumps(info).encode())


def read_state_doc(path: Path) -> dict[str, Any]:
    """The JSON document (counters, seed, ...) of a state file or of a sharded state's index."""
    if is_sharded(path):
        return ckpt.parse_state_doc(path, read_index(path)["metadata"])
    return ckpt.read_metadata_json(path)


def _match_layout(reference: Any, value: Tensor) -> Tensor:
    """``value`` (whole) as this rank's piece when ``reference`` is a sharded DTensor (FSDP), else as is."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(reference, DTensor) and not isinstance(value, DTensor):
        return distribute_tensor(value.to(reference.device), reference.device_mesh, reference.placements,
                                 src_data_rank=None)
    return value


def read_state(
    path: Path, *, model: nn.Module, ema: ModelEMA | None, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, rank: int, world_size: int, steps_per_epoch: int,
) -> RunState:
    """Restore model, EMA, optimizer, scaler and this rank's RNGs from ``path``.

    Everything is read and checked (checksum, format, steps per epoch, keys and
    shapes) before the first tensor is copied into the model.

    Raises:
        CheckpointError: Missing, damaged or foreign file, or one written for another
            model, data or process count.

    """
    try:
        if is_sharded(path):  # an FSDP run's state: whole tensors rebuilt from every rank's shard
            tensors, meta, per_rank = load_sharded(path, extra_per_rank="rng.")
            for extra in per_rank:
                tensors.update(extra)
        else:
            tensors, meta = ckpt.load_tensors(path)
    except ckpt.CheckpointError as exc:
        raise ckpt.CheckpointError(
            f"cannot resume from {path}: {exc.message}; nothing in the run directory was changed",
            hint="Restore the state file from a copy, or start a new run in another directory, "
            "initialising the model from checkpoints/last.safetensors (or best) with a Pretrained "
            "init rule.",
        ) from exc
    doc = ckpt.parse_state_doc(path, meta)
    if doc["steps_per_epoch"] != steps_per_epoch:
        raise ckpt.CheckpointError(
            f"cannot resume from {path}: it was written with {doc['steps_per_epoch']} steps "
            f"per epoch, this run has {steps_per_epoch}",
            hint="The data, data.batch_size, train.grad_accum or the number of processes "
            "changed; resume with the original settings.",
        )

    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    load_weights(model, part("model."), path)
    if ema is not None:
        load_weights(ema.module, part("ema.") or part("model."), path)
        ema.updates = int(doc.get("ema_updates", 0))
    # Hyper-parameters (lr, momentum, ...) come from the spec, so a resumed run may
    # change them; only the optimizer's state (moments, step counts) is restored.
    spec_groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    restored = ckpt.unflatten_optimizer(tensors, doc["optimizer"], optimizer.state_dict())
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for idx, per_param in restored["state"].items():
        if idx < len(params):
            for name, value in per_param.items():
                if isinstance(value, Tensor) and value.shape == params[idx].shape:
                    per_param[name] = _match_layout(params[idx], value)
    optimizer.load_state_dict(restored)
    for group, values in zip(optimizer.param_groups, spec_groups, strict=True):
        group.update(values)
    if scaler.is_enabled() and doc.get("scaler"):
        scaler.load_state_dict(doc["scaler"])
    saved = doc["state"]
    state = RunState(**{k: saved[k] for k in asdict(RunState()) if k in saved})
    if doc["world_size"] == world_size:
        ckpt.restore_rng({k: v.clone() for k, v in part(f"rng.{rank}.").items()})
    else:  # another process count: a fresh, still deterministic stream per rank
        torch.manual_seed(state.seed + rank + state.step)
    return state


def load_weights(module: nn.Module, state: Mapping[str, Tensor], path: Path | str) -> None:
    """Load ``state`` into ``module`` exactly (every key, every shape) or raise a CheckpointError.

    Integer or boolean tensors for floating-point weights, and NaN or infinite values,
    are refused too (naming the first such tensor), before anything is copied.
    """
    hint = ("The spec's model changed since the checkpoint was written; use the spec "
            "saved in the run directory (spec.toml).")
    reference = module.state_dict()
    check_tensors(state, reference, str(path))  # before anything is copied (a DTensor has its whole shape)
    state = {k: _match_layout(reference[k], v) if k in reference else v for k, v in state.items()}
    try:
        result = module.load_state_dict(dict(state), strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ckpt.CheckpointError(
            f"the weights in {path} do not fit this model: {str(exc).strip()[:600]}", hint=hint
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise ckpt.CheckpointError(
            f"the weights in {path} do not fit this model: missing "
            f"{_few(result.missing_keys)}, unexpected {_few(result.unexpected_keys)}", hint=hint,
        )


def _few(keys: Sequence[str]) -> str:
    keys = list(keys)
    if not keys:
        return "none"
    more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
    return ", ".join(keys[:4]) + more


def describe_last_checkpoint(run: RunDir) -> tuple[str, str]:
    """What a failed run leaves to resume from, and what to do: for its error message."""
    state_path = run.resume_state()
    if state_path is None:
        return ("no checkpoint was written yet; there is nothing to resume from",
                "Start again after changing the spec.")
    try:
        info = read_state_doc(state_path)["state"]
    except ckpt.CheckpointError:
        return f"the last checkpoint in {run.checkpoints} is kept", "Inspect it before resuming."
    return (f"the last good checkpoint ({run.last_weights}, epoch {info['epoch']}, step {info['step']}) is kept",
            "Resume from the kept checkpoint with --resume after changing the spec.")
