"""Helpers shared by the checks: nested outputs, comparisons, the calls each kind is judged by."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from pretrain.errors import PretrainError
from pretrain.testing._subject import Subject

__all__ = [
    "ATOL", "LOSS_N", "RTOL", "call", "close", "eval_output", "first_differences", "is_pretext_error", "max_diff",
    "require_scalar",
    "require_tuple", "shape_of", "slice_batch", "tensors", "training_objective", "with_grad_inputs",
]

# Batch size for the loss semantics checks: one weight per sample, all different.
LOSS_N = 4
ATOL, RTOL = 1e-5, 1e-4


def tensors(obj: Any) -> list[Tensor]:
    """Every tensor in a (nested) tuple/list/dict output, in a stable order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for key in sorted(obj, key=str) for t in tensors(obj[key])]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in tensors(item)]
    return []


def slice_batch(obj: Any, i: int, n: int) -> Any:
    """Sample ``i`` of a batch (keeping the batch dimension) in any nesting."""
    if isinstance(obj, torch.Tensor):
        return obj[i : i + 1] if obj.dim() > 0 and obj.shape[0] == n else obj
    if isinstance(obj, Mapping):
        return {k: slice_batch(v, i, n) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(slice_batch(v, i, n) for v in obj)
    return obj


def max_diff(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    if not a.is_floating_point():
        return 0.0 if bool((a == b).all()) else math.inf
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def close(a: Tensor, b: Tensor, *, exact: bool = False) -> bool:
    if a.shape != b.shape:
        return False
    if exact or not a.is_floating_point():
        return bool(torch.equal(a, b))
    return bool(torch.allclose(a.double(), b.double(), rtol=RTOL, atol=ATOL))


def _number(value: Tensor) -> str:
    item = value.item()
    return f"{item:.6g}" if isinstance(item, float) else str(item)


def first_differences(a: Tensor, b: Tensor, *, exact: bool = False, n: int = 3) -> str:
    """The first ``n`` elements where ``a`` and ``b`` differ, with both values.

    ``"3 of 8 elements differ; first: [0, 1] 0.25 vs 0.5, [1, 0] -1 vs 1"``; for
    different shapes, the two shapes.
    """
    if a.shape != b.shape:
        return f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    x, y = a.detach().cpu(), b.detach().cpu()
    if x.dim() == 0:
        return f"{_number(x)} vs {_number(y)}"
    if x.is_floating_point() and y.is_floating_point() and not exact:
        differ = ~torch.isclose(x.double(), y.double(), rtol=RTOL, atol=ATOL, equal_nan=True)
    else:
        differ = x != y
    where = differ.nonzero()
    if len(where) == 0:
        return "no element differs"
    shown = []
    for index in where[:n].tolist():
        at = tuple(index)
        shown.append(f"[{', '.join(map(str, at))}] {_number(x[at])} vs {_number(y[at])}")
    return f"{len(where)} of {differ.numel()} elements differ; first: " + ", ".join(shown)


def shape_of(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"Tensor{tuple(obj.shape)}"
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__}[" + ", ".join(shape_of(v) for v in obj) + "]"
    if isinstance(obj, Mapping):
        return "dict{" + ", ".join(f"{k}: {shape_of(v)}" for k, v in obj.items()) + "}"
    return type(obj).__name__


def is_pretext_error(exc: BaseException) -> bool:
    return isinstance(exc, (PretrainError, NotImplementedError))


def call(subject: Subject, check: str, what: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn an exception into a check failure that names the call."""
    try:
        return fn()
    except AssertionError:
        raise
    except Exception as exc:
        raise subject.fail(
            check, f"{what} raised {type(exc).__name__}: {exc}",
            "Make the component accept the inputs its kind's contract promises "
            "(or declare example_input / example_inputs if it needs other shapes).",
        ) from exc


def eval_output(subject: Subject, inst: Any, args: tuple[Any, ...]) -> Any:
    """What eval-mode checks compare: the kind's prediction-like output."""
    with torch.no_grad():
        if subject.kind == "head":
            return inst.predict(args[0])
        if subject.kind == "loss":
            return inst(args[0], args[1], reduction_override="none")
        if subject.kind == "model":
            try:
                return inst.predict(args[0])
            except Exception as exc:
                if not is_pretext_error(exc):
                    raise
                return inst.extract_feat(args[0])
        return inst(*args)


def with_grad_inputs(args: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[Tensor]]:
    """Clone float tensors of ``args`` as leaves requiring grad; return them too."""
    leaves: list[Tensor] = []

    def conv(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor) and obj.is_floating_point():
            leaf = obj.detach().clone().requires_grad_(True)
            leaves.append(leaf)
            return leaf
        if isinstance(obj, (tuple, list)):
            return type(obj)(conv(v) for v in obj)
        return obj

    return tuple(conv(a) for a in args), leaves


def training_objective(subject: Subject, inst: Any, args: tuple[Any, ...]) -> Tensor:
    """The scalar whose gradient a training step would follow, for each kind."""
    if subject.kind in ("head", "model"):
        out = inst.loss(*args)
        if not isinstance(out, Mapping) or "loss" not in out:
            raise subject.fail(
                "check_gradients", f"loss() returned {shape_of(out)}, not a dict with a 'loss' entry",
                "Return {'loss': total, ...} from loss().",
            )
        loss: Tensor = out["loss"]
        return loss
    if subject.kind == "loss":
        value: Tensor = inst(*args)
        return value.sum()
    out = inst(*args)
    # A fixed random projection of every float output: a plain sum would give zero
    # gradients behind a normalisation layer and hide real connectivity.
    gen = torch.Generator().manual_seed(1234)
    floats = [t for t in tensors(out) if t.is_floating_point() and t.requires_grad]
    return sum(((t * torch.randn(t.shape, generator=gen)).sum() for t in floats), torch.zeros(()))


def require_tuple(subject: Subject, check: str, out: Any, n: int, what: str) -> None:
    if isinstance(out, torch.Tensor):
        raise subject.fail(
            check, f"{what} returned a bare tensor {tuple(out.shape)}; the {subject.kind} contract is a "
            "tuple of tensors (one per output level)",
            "Return a tuple, e.g. `return (x,)` or `return tuple(outs)`; the next component "
            "indexes it (feats[-1]) and would otherwise pick a sample instead of a level.",
        )
    if not isinstance(out, tuple) or not out:
        raise subject.fail(
            check, f"{what} returned {shape_of(out)}; the contract is a non-empty tuple of tensors",
            "Return `tuple(outs)` (a tuple, not a list or dict).",
        )
    for i, t in enumerate(out):
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] != n:
            raise subject.fail(
                check, f"{what} output [{i}] is {shape_of(t)}; every entry must be a tensor with the "
                f"batch dimension first ({n} samples in)",
                "Keep the batch dimension first in every returned tensor.",
            )


def require_scalar(subject: Subject, check: str, value: Any, what: str, *, grad: bool) -> None:
    if not isinstance(value, torch.Tensor) or value.dim() != 0 or not value.is_floating_point():
        raise subject.fail(
            check, f"{what} is {shape_of(value)}; it must be a 0-dim floating-point tensor",
            "Reduce the loss to a scalar (mean over the batch) before returning it.",
        )
    if not bool(torch.isfinite(value)):
        raise subject.fail(check, f"{what} is {float(value)} (not finite)",
                           "Guard logs/divisions (clamp, eps) so that random inputs give a finite loss.")
    if grad and not value.requires_grad:
        raise subject.fail(check, f"{what} does not require grad, so training cannot update anything",
                           "Do not compute the loss under torch.no_grad() or from detached tensors.")
