"""The checks. Each takes a :class:`Subject` and raises ``ComponentCheckError`` on failure.

Every failure names what is wrong and what the author must change. Checks build
fresh instances from the example config (under a fixed seed), so they are
independent and can run in any order.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import tomli_w
import tomllib
import torch
from safetensors.torch import load, save
from torch import Tensor

from pretrain._errors import PretrainError
from pretrain._registry import get_registry
from pretrain._schema import SchemaDerivationError, component_schema
from pretrain.testing._subject import BATCH, MODULE_KINDS, Subject

__all__ = ["CHECKS", "checks_for_kind"]

# Batch size for the loss semantics checks: one weight per sample, all different.
_LOSS_N = 4
_ATOL, _RTOL = 1e-5, 1e-4


# ---------------------------------------------------------------------------- helpers


def _tensors(obj: Any) -> list[Tensor]:
    """Every tensor in a (nested) tuple/list/dict output, in a stable order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for key in sorted(obj, key=str) for t in _tensors(obj[key])]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors(item)]
    return []


def _slice(obj: Any, i: int, n: int) -> Any:
    """Sample ``i`` of a batch (keeping the batch dimension) in any nesting."""
    if isinstance(obj, torch.Tensor):
        return obj[i : i + 1] if obj.dim() > 0 and obj.shape[0] == n else obj
    if isinstance(obj, Mapping):
        return {k: _slice(v, i, n) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_slice(v, i, n) for v in obj)
    return obj


def _max_diff(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    if not a.is_floating_point():
        return 0.0 if bool((a == b).all()) else math.inf
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _close(a: Tensor, b: Tensor, *, exact: bool = False) -> bool:
    if a.shape != b.shape:
        return False
    if exact or not a.is_floating_point():
        return bool(torch.equal(a, b))
    return bool(torch.allclose(a.double(), b.double(), rtol=_RTOL, atol=_ATOL))


def _shape(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"Tensor{tuple(obj.shape)}"
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__}[" + ", ".join(_shape(v) for v in obj) + "]"
    if isinstance(obj, Mapping):
        return "dict{" + ", ".join(f"{k}: {_shape(v)}" for k, v in obj.items()) + "}"
    return type(obj).__name__


def _is_pretext_error(exc: BaseException) -> bool:
    return isinstance(exc, (PretrainError, NotImplementedError))


def _call(subject: Subject, check: str, what: str, fn: Callable[[], Any]) -> Any:
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


def _eval_output(subject: Subject, inst: Any, args: tuple[Any, ...]) -> Any:
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
                if not _is_pretext_error(exc):
                    raise
                return inst.extract_feat(args[0])
        return inst(*args)


def _with_grad_inputs(args: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[Tensor]]:
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


def _training_objective(subject: Subject, inst: Any, args: tuple[Any, ...]) -> Tensor:
    """The scalar whose gradient a training step would follow, for each kind."""
    if subject.kind in ("head", "model"):
        out = inst.loss(*args)
        if not isinstance(out, Mapping) or "loss" not in out:
            raise subject.fail(
                "check_gradients", f"loss() returned {_shape(out)}, not a dict with a 'loss' entry",
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
    floats = [t for t in _tensors(out) if t.is_floating_point() and t.requires_grad]
    return sum(((t * torch.randn(t.shape, generator=gen)).sum() for t in floats), torch.zeros(()))


def _require_tuple(subject: Subject, check: str, out: Any, n: int, what: str) -> None:
    if isinstance(out, torch.Tensor):
        raise subject.fail(
            check, f"{what} returned a bare tensor {tuple(out.shape)}; the {subject.kind} contract is a "
            "tuple of tensors (one per output level)",
            "Return a tuple, e.g. `return (x,)` or `return tuple(outs)`; the next component "
            "indexes it (feats[-1]) and would otherwise pick a sample instead of a level.",
        )
    if not isinstance(out, tuple) or not out:
        raise subject.fail(
            check, f"{what} returned {_shape(out)}; the contract is a non-empty tuple of tensors",
            "Return `tuple(outs)` (a tuple, not a list or dict).",
        )
    for i, t in enumerate(out):
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] != n:
            raise subject.fail(
                check, f"{what} output [{i}] is {_shape(t)}; every entry must be a tensor with the "
                f"batch dimension first ({n} samples in)",
                "Keep the batch dimension first in every returned tensor.",
            )


def _require_scalar(subject: Subject, check: str, value: Any, what: str, *, grad: bool) -> None:
    if not isinstance(value, torch.Tensor) or value.dim() != 0 or not value.is_floating_point():
        raise subject.fail(
            check, f"{what} is {_shape(value)}; it must be a 0-dim floating-point tensor",
            "Reduce the loss to a scalar (mean over the batch) before returning it.",
        )
    if not bool(torch.isfinite(value)):
        raise subject.fail(check, f"{what} is {float(value)} (not finite)",
                           "Guard logs/divisions (clamp, eps) so that random inputs give a finite loss.")
    if grad and not value.requires_grad:
        raise subject.fail(check, f"{what} does not require grad, so training cannot update anything",
                           "Do not compute the loss under torch.no_grad() or from detached tensors.")


# ---------------------------------------------------------------------------- generic checks


def check_schema(subject: Subject) -> None:
    """The schema derives, its JSON Schema serialises, and the example config round-trips."""
    name = "check_schema"
    try:
        schema = component_schema(subject.cls, subject.kind, subject.name)
        text = json.dumps(schema.json_schema(subject.record.qualified_name))
    except SchemaDerivationError as exc:
        raise subject.fail(name, f"its spec schema cannot be derived: {exc}",
                           "Make __init__ keyword-only with spec-friendly annotations, or set config_model.") from None
    except Exception as exc:
        raise subject.fail(name, f"its JSON Schema cannot be generated: {type(exc).__name__}: {exc}",
                           "Use spec-friendly types (no torch types or callables as plain fields).") from None
    if '"properties"' not in text:
        raise subject.fail(name, "its JSON Schema has no properties", "Report this to the pretrain developers.")
    table = {"type": subject.name, **subject.config}
    try:
        as_json = json.loads(json.dumps(table))
    except (TypeError, ValueError) as exc:
        raise subject.fail(name, f"the example config is not plain data ({exc})",
                           "example_config may hold only str/int/float/bool/lists/tables.") from None
    stripped = _drop_nulls(table, schema)
    if isinstance(stripped, str):
        raise subject.fail(name, stripped, "Make None the field's default, so leaving the key out means None.")
    as_toml = tomllib.loads(tomli_w.dumps({"t": stripped}))["t"]
    reference = _flatten_node(subject.validate(check=name))
    for label, data in (("JSON", as_json), ("TOML", as_toml)):
        again = _flatten_node(subject.validate(data, name))
        if again != reference:
            raise subject.fail(
                name, f"the example config changes after a {label} round trip: {reference} -> {again}",
                "Use types that survive JSON/TOML (tuples become lists, validated back into tuples).",
            )


def _drop_nulls(table: Mapping[str, Any], schema: Any) -> dict[str, Any] | str:
    """TOML has no null: drop ``None`` values that equal the default, else explain."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if value is None:
            info = schema.model.model_fields.get(key)
            if info is not None and info.default is not None:
                return (f"the example sets {key} = None but its default is {info.default!r}; TOML spec "
                        "files have no null, so users cannot write this value")
            continue
        out[key] = value
    return out


def _flatten_node(node: Any) -> list[tuple[str, str, Any]]:
    return [(n.loc, n.type_name, json.loads(json.dumps(n.params, default=str))) for n in node.walk()]


def check_documentation(subject: Subject) -> None:
    """A summary line and a description for every spec field (``pretrain describe`` shows them)."""
    schema = component_schema(subject.cls, subject.kind, subject.name)
    if not schema.summary:
        raise subject.fail("check_documentation", "the class has no docstring summary",
                           "Start the class docstring with one line saying what the component is.")
    missing = [f for f in schema.model.model_fields if not (schema.descriptions.get(f) or "").strip()]
    if missing:
        raise subject.fail(
            "check_documentation", f"fields without a description: {', '.join(missing)}",
            "Document them in the class docstring's Google-style `Args:` section (`name: description`).",
        )


def check_example_config(subject: Subject) -> None:
    """The documented example config validates and builds."""
    subject.build()


def check_import_side_effects(subject: Subject) -> None:
    """Importing the component's module again leaves the registry exactly as it was."""
    name = "check_import_side_effects"
    module_name = subject.cls.__module__
    registry = get_registry()
    self_registered = [
        r for r in registry.entries() if r.source == "runtime" and r.value.partition(":")[0] == module_name
    ]
    if self_registered:
        raise subject.fail(
            name, f"its module {module_name} registered components at import: "
            + ", ".join(f"{r.kind} {r.name}" for r in self_registered),
            "Declare components as entry points in pyproject.toml (or in a pretrain_register_components "
            "hook); never call register() at import time.",
        )
    if module_name == "__main__" or "<locals>" in subject.cls.__qualname__ or module_name not in sys.modules:
        return  # not re-importable: nothing more to observe
    before = _snapshot()
    saved = sys.modules.pop(module_name)
    parent_name, _, leaf = module_name.rpartition(".")
    parent = sys.modules.get(parent_name)
    parent_attr = getattr(parent, leaf, None) if parent is not None else None
    try:
        importlib.import_module(module_name)
    except Exception as exc:
        raise subject.fail(
            name, f"importing {module_name} a second time raised {type(exc).__name__}: {exc}",
            "Keep module import free of global registration or state; it must be repeatable.",
        ) from exc
    finally:
        sys.modules[module_name] = saved
        if parent is not None and parent_attr is not None:
            setattr(parent, leaf, parent_attr)
    after = _snapshot()
    if after != before:
        changed = sorted(set(after[1]) ^ set(before[1]))
        raise subject.fail(
            name, f"importing {module_name} changed the registry: {changed or 'registry replaced'}",
            "Do not register, unregister or replace the registry at import; use entry points.",
        )


def _snapshot() -> tuple[int, tuple[tuple[str, ...], ...], tuple[str, ...]]:
    registry = get_registry()
    entries = tuple((r.kind, r.name, r.value, r.distribution, r.source) for r in registry.entries())
    return id(registry), entries, tuple(f.describe() for f in registry.failures())


# ---------------------------------------------------------------------------- module checks


def check_forward_contract(subject: Subject) -> None:
    """Types and shapes of the kind's calls (tuple conventions, loss dicts, (N, C) scores)."""
    name = "check_forward_contract"
    inst = subject.build()
    args = subject.example_inputs(inst)
    kind = subject.kind
    inst.eval()
    if kind in ("backbone", "neck", "target_generator"):
        with torch.no_grad():
            out = _call(subject, name, f"forward({_shape(args[0])})", lambda: inst(*args))
        if kind == "target_generator":
            if not _tensors(out) or any(t.shape[0] != BATCH for t in _tensors(out) if t.dim()):
                raise subject.fail(name, f"forward returned {_shape(out)}; expected targets per sample",
                                   "Return a tensor (or tuple of tensors) with the batch dimension first.")
            return
        _require_tuple(subject, name, out, BATCH, "forward")
    elif kind == "head":
        _check_head(subject, inst, args)
    elif kind == "loss":
        _check_loss_call(subject, inst, args)
    elif kind == "model":
        _check_model(subject, inst, args)
    elif kind == "batch_augment":
        inst.train()
        out = _call(subject, name, "forward(images, dense_targets)", lambda: inst(*args))
        if not (isinstance(out, tuple) and len(out) == 2
                and all(isinstance(o, torch.Tensor) and o.shape == a.shape for o, a in zip(out, args, strict=True))):
            raise subject.fail(name, f"forward returned {_shape(out)} for inputs {_shape(args)}",
                               "Return (images, dense_targets) with the input shapes.")


def _check_head(subject: Subject, inst: Any, args: tuple[Any, ...]) -> None:
    name = "check_forward_contract"
    (feats, targets), _ = _with_grad_inputs(args[:2])  # as in training: features carry grad
    inst.eval()
    with torch.no_grad():
        scores = _call(subject, name, f"predict({_shape(feats)})", lambda: inst.predict(feats))
    n = BATCH
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.shape[0] != n:
        raise subject.fail(name, f"predict() returned {_shape(scores)}; expected scores of shape (N, C) = ({n}, C)",
                           "Return one row of class scores per sample; take feats[-1] (the last level) "
                           "from the tuple, not a sample.")
    classes = subject.params.get("num_classes")
    if isinstance(classes, int) and scores.shape[1] != classes:
        raise subject.fail(name, f"predict() returned {scores.shape[1]} columns but num_classes is {classes}",
                           "Size the classifier by num_classes.")
    inst.train()
    out = _call(subject, name, f"loss({_shape(feats)}, targets)", lambda: inst.loss(feats, targets))
    if not isinstance(out, Mapping) or "loss" not in out:
        raise subject.fail(name, f"loss() returned {_shape(out)}; the head contract is a dict whose 'loss' entry is "
                           "the total to optimise", "Return {'loss': total, ...} (other keys are only logged).")
    _require_scalar(subject, name, out["loss"], "loss()['loss']", grad=True)
    for key, value in out.items():
        if not isinstance(value, torch.Tensor):
            raise subject.fail(name, f"loss()[{key!r}] is {type(value).__name__}",
                               "Every logged value must be a tensor.")


def _check_loss_call(subject: Subject, inst: Any, args: tuple[Any, ...]) -> None:
    name = "check_forward_contract"
    params = inspect.signature(inst.forward).parameters
    missing = [p for p in ("weight", "avg_factor", "reduction_override") if p not in params]
    if missing and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise subject.fail(
            name, f"forward() has no {', '.join(missing)} parameter(s)",
            "Use forward(pred, target, weight=None, avg_factor=None, reduction_override=None) "
            "(pretrain.losses.weighted_loss does the weighting and reduction).",
        )
    kind = getattr(inst, "target_kind", None)
    if kind not in ("index", "dense", "both"):
        raise subject.fail(name, f"target_kind is {kind!r}", "Set target_kind to 'index', 'dense' or 'both'.")
    pred = args[0].detach().clone().requires_grad_(True)
    value = _call(subject, name, f"forward({_shape(pred)}, {_shape(args[1])})",
                  lambda: inst(pred, args[1], reduction_override="mean"))
    _require_scalar(subject, name, value, "the mean-reduced loss", grad=True)


def _check_model(subject: Subject, inst: Any, args: tuple[Any, ...]) -> None:
    name = "check_forward_contract"
    inputs, targets = args[0], args[1]
    inst.train()
    out = _call(subject, name, f"loss({_shape(inputs)}, targets)", lambda: inst.loss(inputs, targets))
    if not isinstance(out, Mapping) or "loss" not in out:
        raise subject.fail(name, f"loss() returned {_shape(out)}; the model contract is a dict with an explicit "
                           "'loss' total", "Return {'loss': total, ...}; other keys are only logged, never summed.")
    _require_scalar(subject, name, out["loss"], "loss()['loss']", grad=True)
    inst.eval()
    with torch.no_grad():
        try:
            pred = inst.predict(inputs)
        except Exception as exc:
            if not _is_pretext_error(exc):
                raise subject.fail(name, f"predict() raised {type(exc).__name__}: {exc}",
                                   "Return a dict of predictions, or raise PretrainError for a pretext task.") from exc
            feats = _call(subject, name, "extract_feat(inputs)", lambda: inst.extract_feat(inputs))
            if not _tensors(feats):
                raise subject.fail(name, f"extract_feat() returned {_shape(feats)}",
                                   "Return the backbone features.") from exc
            return
    if not isinstance(pred, Mapping):
        raise subject.fail(name, f"predict() returned {_shape(pred)}", "Return a dict (classifiers: scores, labels).")
    scores, labels = pred.get("scores"), pred.get("labels")
    n = BATCH
    if scores is not None and (not isinstance(scores, torch.Tensor) or scores.shape[:1] != (n,)
                               or scores.dim() != 2 or not scores.is_floating_point()):
        raise subject.fail(name, f"predict()['scores'] is {_shape(scores)}", "Return float scores of shape (N, C).")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != (n,)
                               or labels.dtype != torch.long):
        raise subject.fail(name, f"predict()['labels'] is {_shape(labels)}", "Return int64 labels of shape (N,).")


def check_deterministic_eval(subject: Subject) -> None:
    """Two eval-mode calls on the same input give identical outputs."""
    inst = subject.build()
    args = subject.example_inputs(inst)
    inst.eval()
    first = _call(subject, "check_deterministic_eval", "the eval call", lambda: _eval_output(subject, inst, args))
    second = _eval_output(subject, inst, args)  # RNG state moved on: random eval behaviour shows
    for i, (a, b) in enumerate(zip(_tensors(first), _tensors(second), strict=True)):
        if not _close(a, b, exact=True):
            raise subject.fail(
                "check_deterministic_eval",
                f"two eval-mode calls on the same input differ (output {i}, max diff {_max_diff(a, b):.3g})",
                "Sample randomness only when self.training is true (dropout, drop-path, masking, noise).",
            )


def check_batch_independence(subject: Subject) -> None:
    """In eval mode, sample i's output does not depend on the other samples of the batch."""
    name = "check_batch_independence"
    inst = subject.build()
    args = subject.example_inputs(inst)
    inst.eval()
    torch.manual_seed(7)
    full = _tensors(_call(subject, name, "the eval call", lambda: _eval_output(subject, inst, args)))
    compared = 0
    for i in range(BATCH):
        torch.manual_seed(7)
        single = _tensors(_eval_output(subject, inst, _slice(args, i, BATCH)))
        for j, (a, b) in enumerate(zip(full, single, strict=False)):
            if a.dim() == 0 or a.shape[0] != BATCH or b.dim() == 0 or b.shape[0] != 1:
                continue
            compared += 1
            if not _close(a[i], b[0]):
                raise subject.fail(
                    name,
                    f"sample {i}'s output {j} changes by {_max_diff(a[i], b[0]):.3g} when the other samples "
                    "are in the batch",
                    "In eval mode nothing may mix samples: no batch statistics (batch-mean subtraction, "
                    "norms over dim 0), and BatchNorm must use its running statistics.",
                )
    if compared == 0:
        raise subject.fail(name, "no output has a batch dimension to compare",
                           "Keep the batch dimension first in the outputs (a loss with reduction 'none' too).")


def check_state_dict_roundtrip(subject: Subject) -> None:
    """Weights saved as safetensors and loaded into a differently seeded instance reproduce outputs."""
    name = "check_state_dict_roundtrip"
    source, target = subject.build(seed=0), subject.build(seed=1)
    try:
        blob = save({k: v.detach().cpu().contiguous().clone() for k, v in source.state_dict().items()})
    except Exception as exc:
        raise subject.fail(name, f"state_dict() cannot be saved as safetensors: {type(exc).__name__}: {exc}",
                           "Keep only tensors in the state dict (no get_extra_state objects).") from exc
    try:
        target.load_state_dict(load(blob), strict=True)
    except Exception as exc:
        raise subject.fail(name, f"loading the saved state dict failed: {exc}",
                           "Build the same parameters and buffers for the same config.") from exc
    args = subject.example_inputs(source)
    outs = []
    for module in (source, target):
        module.eval()
        torch.manual_seed(3)
        outs.append(_tensors(_call(subject, name, "the eval call", lambda m=module: _eval_output(subject, m, args))))
    for i, (a, b) in enumerate(zip(*outs, strict=True)):
        if not _close(a, b, exact=True):
            raise subject.fail(
                name, f"after loading the weights, output {i} differs by {_max_diff(a, b):.3g}",
                "State that affects the output must be a parameter or a persistent buffer "
                "(or derived from the config), so that checkpoints restore it.",
            )


def check_gradients(subject: Subject) -> None:
    """One training objective reaches every trainable parameter (and the inputs, for necks/heads/losses)."""
    name = "check_gradients"
    inst = subject.build()
    raw = subject.example_inputs(inst)
    inst.train()
    args, leaves = _with_grad_inputs(raw) if subject.kind in ("neck", "head", "loss") else (raw, [])
    torch.manual_seed(5)
    objective = _call(subject, name, "the training objective", lambda: _training_objective(subject, inst, args))
    if not objective.requires_grad:
        raise subject.fail(name, "the training objective does not require grad",
                           "Do not detach outputs or run forward under torch.no_grad().")
    objective.backward()
    trainable = [(n, p) for n, p in inst.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    if missing:
        raise subject.fail(
            name, f"{len(missing)} of {len(trainable)} trainable parameters get no gradient: {', '.join(missing[:8])}"
            + (" ..." if len(missing) > 8 else ""),
            "Use every parameter in forward/loss, delete unused layers, register fixed tensors as "
            "buffers, or freeze them (requires_grad=False) on purpose.",
        )
    bad = [n for n, p in trainable if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    if bad:
        raise subject.fail(name, f"non-finite gradients in: {', '.join(bad[:8])}",
                           "Guard divisions and logs (eps, clamp).")
    if leaves and all(leaf.grad is None for leaf in leaves):
        raise subject.fail(name, "no gradient reaches the inputs, so the layers before it would not train",
                           "Do not detach the inputs (or wrap them in torch.no_grad()).")


# ---------------------------------------------------------------------------- loss semantics


def _loss_setup(subject: Subject) -> tuple[Any, Tensor, Tensor, Tensor]:
    inst = subject.build()
    pred, target = subject.example_inputs(inst, _LOSS_N)
    with torch.no_grad():
        none = _call(subject, "check_loss_reduction", "forward(..., reduction_override='none')",
                     lambda: inst(pred, target, reduction_override="none"))
    if not isinstance(none, torch.Tensor) or none.dim() == 0 or none.shape[0] != _LOSS_N:
        raise subject.fail(
            "check_loss_reduction", f"reduction 'none' returned {_shape(none)}; it must keep the batch dimension",
            "Honour reduction_override: 'none' returns the per-sample (N,) or element-wise (N, ...) loss.",
        )
    return inst, pred, target, none


def _expect(subject: Subject, check: str, got: Any, want: Tensor, what: str, fix: str) -> None:
    if not isinstance(got, torch.Tensor) or not _close(got.detach(), want):
        shown = _shape(got) if not isinstance(got, torch.Tensor) or got.dim() else f"{float(got):.6g}"
        wanted = _shape(want) if want.dim() else f"{float(want):.6g}"
        raise subject.fail(check, f"{what}: got {shown}, expected {wanted}", fix)


def check_loss_weight(subject: Subject) -> None:
    """Per-sample ``weight`` scales each sample's loss; an all-zero weight gives zero loss."""
    name = "check_loss_weight"
    inst, pred, target, none = _loss_setup(subject)
    weight = torch.tensor([0.0, 1.0, 2.0, 0.5])
    fix = "Multiply the element-wise loss by `weight` before reducing (pretrain.losses.weighted_loss does it)."
    with torch.no_grad():
        got = inst(pred, target, weight=weight, reduction_override="none")
        _expect(subject, name, got, none * weight.view(-1, *[1] * (none.dim() - 1)),
                "reduction 'none' with weight [0, 1, 2, 0.5]", fix)
        zero = inst(pred, target, weight=torch.zeros(_LOSS_N), reduction_override="mean")
    _expect(subject, name, zero, torch.zeros(()), "mean loss with an all-zero weight", fix)


def check_loss_reduction(subject: Subject) -> None:
    """``reduction_override`` none/mean/sum give the element-wise loss, its mean and its sum."""
    name = "check_loss_reduction"
    inst, pred, target, none = _loss_setup(subject)
    fix = "Honour reduction_override ('none' | 'mean' | 'sum'), e.g. through pretrain.losses.weighted_loss."
    with torch.no_grad():
        for reduction, want in (("mean", none.mean()), ("sum", none.sum())):
            got = inst(pred, target, reduction_override=reduction)
            _expect(subject, name, got, want, f"reduction {reduction!r}", fix)


def check_loss_avg_factor(subject: Subject) -> None:
    """``avg_factor`` replaces the element count of a mean (and leaves sums and 'none' alone)."""
    name = "check_loss_avg_factor"
    inst, pred, target, none = _loss_setup(subject)
    fix = ("With avg_factor, 'mean' is loss.sum() / avg_factor; 'sum' and 'none' ignore it "
           "(pretrain.losses.weight_reduce_loss).")
    with torch.no_grad():
        _expect(subject, name, inst(pred, target, avg_factor=3.0, reduction_override="mean"),
                none.sum() / 3.0, "mean with avg_factor=3", fix)
        _expect(subject, name, inst(pred, target, avg_factor=3.0, reduction_override="sum"),
                none.sum(), "sum with avg_factor=3", fix)
        _expect(subject, name, inst(pred, target, avg_factor=3.0, reduction_override="none"),
                none, "'none' with avg_factor=3", fix)


def check_loss_weight_scaling(subject: Subject) -> None:
    """Doubling ``loss_weight`` doubles the loss (it is a linear factor)."""
    name = "check_loss_weight_scaling"
    fields = subject.node.schema.model.model_fields
    if "loss_weight" not in fields:
        raise subject.fail(name, "there is no loss_weight field",
                           "Add `loss_weight: float = 1.0` and multiply the returned loss by it; heads and specs "
                           "use it to balance losses.")
    base = float(subject.params.get("loss_weight", 1.0)) or 1.0
    one = subject.build(table={**subject.config, "loss_weight": base}, check=name)
    two = subject.build(table={**subject.config, "loss_weight": 2 * base}, check=name)
    pred, target = subject.example_inputs(one, _LOSS_N)
    with torch.no_grad():
        a = one(pred, target, reduction_override="mean")
        b = two(pred, target, reduction_override="mean")
    _expect(subject, name, b, 2 * a, f"the loss with loss_weight={2 * base} (vs {base})",
            "Return loss_weight * loss (after reduction).")


# ---------------------------------------------------------------------------- registry of checks

CHECKS: dict[str, Callable[[Subject], None]] = {
    "check_schema": check_schema,
    "check_documentation": check_documentation,
    "check_example_config": check_example_config,
    "check_import_side_effects": check_import_side_effects,
    "check_forward_contract": check_forward_contract,
    "check_deterministic_eval": check_deterministic_eval,
    "check_batch_independence": check_batch_independence,
    "check_state_dict_roundtrip": check_state_dict_roundtrip,
    "check_gradients": check_gradients,
    "check_loss_weight": check_loss_weight,
    "check_loss_reduction": check_loss_reduction,
    "check_loss_avg_factor": check_loss_avg_factor,
    "check_loss_weight_scaling": check_loss_weight_scaling,
}


def checks_for_kind(kind: str) -> Iterator[str]:
    """Names of the checks that apply to components of ``kind``, in run order."""
    yield from ("check_schema", "check_documentation", "check_example_config", "check_import_side_effects")
    if kind not in MODULE_KINDS:
        return
    yield "check_forward_contract"
    if kind != "batch_augment":  # batch augments mix samples at random by definition
        yield from ("check_deterministic_eval", "check_batch_independence")
    yield "check_state_dict_roundtrip"
    if kind not in ("target_generator", "batch_augment"):  # both run under no_grad
        yield "check_gradients"
    if kind == "loss":
        yield from ("check_loss_weight", "check_loss_reduction", "check_loss_avg_factor",
                    "check_loss_weight_scaling")
