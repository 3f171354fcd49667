"""The checks. Each takes a :class:`Subject` and raises ``ComponentCheckError`` on failure.

Every failure names what is wrong and what the author must change. Checks build
fresh instances from the example config (under a fixed seed), so they are
independent and can run in any order. Loss semantics live in
:mod:`pretrain.testing._loss_checks`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import tomli_w
import tomllib
import torch
from safetensors.torch import load, save
from torch import Tensor

from pretrain.assembly.assemble import build_on_meta, is_meta_limitation
from pretrain.errors import PretrainError
from pretrain.registry.kinds import KIND_INFO
from pretrain.registry.registry import Registry, get_registry, set_registry
from pretrain.registry.schema import SchemaDerivationError, component_schema
from pretrain.testing._helpers import (
    call,
    close,
    eval_output,
    first_differences,
    is_pretext_error,
    max_diff,
    require_scalar,
    require_tuple,
    shape_of,
    slice_batch,
    tensors,
    training_objective,
    with_grad_inputs,
)
from pretrain.testing._loss_checks import (
    check_loss_avg_factor,
    check_loss_reduction,
    check_loss_weight,
    check_loss_weight_scaling,
)
from pretrain.testing._subject import BATCH, MODULE_KINDS, Subject

__all__ = ["CHECKS", "checks_for_kind"]


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
    if not KIND_INFO[subject.kind].spec:  # no spec fields: the summary is all there is
        if not (subject.cls.__doc__ or "").strip():
            raise subject.fail("check_documentation", "the class has no docstring summary",
                               "Start the class docstring with one line saying what it converts.")
        return
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


def check_meta_build(subject: Subject) -> None:
    """The example config builds on the meta device, as ``validate``/``train``/``eval`` build it first."""
    name = "check_meta_build"
    try:
        build_on_meta(subject.node)
    except PretrainError as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        if is_meta_limitation(cause):
            raise subject.fail(
                name, f"building it on the meta device raised {type(cause).__name__}: {cause}. "
                "`pretrain validate`, `pretrain train` and `pretrain eval` build every component on the "
                "meta device first, where tensors have shapes but no values",
                "No .item() / .tolist() / float(t) / data-dependent Python (`if t > 0`) on tensors in "
                "__init__ (or init rules / post_init_weights): compute such numbers with plain Python, e.g. "
                "[i * rate / (n - 1) for i in range(n)] instead of torch.linspace(0, rate, n).tolist().",
            ) from exc
        raise subject.fail(name, f"building it on the meta device raised: {exc.message}",
                           exc.hint or "Make __init__ work for this config.") from exc


def check_import_side_effects(subject: Subject) -> None:
    """Importing the component's module again registers nothing and leaves the registry as it was.

    The module is imported a second time under a scratch registry: what it registers
    there, it registers at import. Registrations made in this process by other code
    (``registry.register(...)`` in a notebook or a test) are not its doing and are ignored.
    """
    name = "check_import_side_effects"
    module_name = subject.cls.__module__
    if module_name == "__main__" or "<locals>" in subject.cls.__qualname__ or module_name not in sys.modules:
        return  # not re-importable: nothing to observe
    before = _snapshot()
    # Entry points are not what this looks at: no metadata scan (_scanned empty).
    scratch = Registry(autoload=False, validator=None, _scanned=[], _plugin_eps=[])
    previous = set_registry(scratch)
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
        set_registry(previous)
        sys.modules[module_name] = saved
        if parent is not None and parent_attr is not None:
            setattr(parent, leaf, parent_attr)
    registered = scratch.entries()
    if registered:
        raise subject.fail(
            name, f"its module {module_name} registered components at import: "
            + ", ".join(f"{r.kind} {r.name}" for r in registered),
            "Declare components as entry points in pyproject.toml (or in a pretrain_register_components "
            "hook); never call register() at import time.",
        )
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
    if subject.kind == "metric":
        _check_metric(subject, inst)
        return
    args = subject.example_inputs(inst)
    kind = subject.kind
    inst.eval()
    if kind in ("backbone", "neck", "target_generator"):
        with torch.no_grad():
            out = call(subject, name, f"forward({shape_of(args[0])})", lambda: inst(*args))
        if kind == "target_generator":
            if not tensors(out) or any(t.shape[0] != BATCH for t in tensors(out) if t.dim()):
                raise subject.fail(name, f"forward returned {shape_of(out)}; expected targets per sample",
                                   "Return a tensor (or tuple of tensors) with the batch dimension first.")
            return
        require_tuple(subject, name, out, BATCH, "forward")
    elif kind == "head":
        _check_head(subject, inst, args)
    elif kind == "loss":
        _check_loss_call(subject, inst, args)
    elif kind == "model":
        _check_model(subject, inst, args)
    elif kind == "batch_augment":
        inst.train()
        out = call(subject, name, "forward(images, dense_targets)", lambda: inst(*args))
        if not (isinstance(out, tuple) and len(out) == 2
                and all(isinstance(o, torch.Tensor) and o.shape == a.shape for o, a in zip(out, args, strict=True))):
            raise subject.fail(name, f"forward returned {shape_of(out)} for inputs {shape_of(args)}",
                               "Return (images, dense_targets) with the input shapes.")


def _check_metric(subject: Subject, inst: Any) -> None:
    """Reset -> update (twice) -> compute; the scalars are floats named as ``metric_names`` says."""
    from pretrain.components import MetricContext, MetricInputs, MetricResult

    name, n, classes, topk = "check_forward_contract", BATCH, 5, (1, 2)
    retrieval = getattr(inst, "task", "classification") == "retrieval"
    context = MetricContext(num_classes=None if retrieval else classes, topk=topk, device=torch.device("cpu"))
    call(subject, name, "reset(context)", lambda: inst.reset(context))
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        if retrieval:
            relevance = torch.rand(n, 4, generator=gen) > 0.5
            inputs = MetricInputs(relevance=relevance, num_relevant=relevance.sum(1) + 1)
        else:
            inputs = MetricInputs(scores=torch.rand(n, classes, generator=gen).softmax(1),
                                  labels=torch.randint(0, classes, (n,), generator=gen))
        call(subject, name, "update(inputs)", functools.partial(inst.update, inputs))
    bad = [k for k in inst.states if k not in getattr(inst, "reductions", {})]
    if bad:
        raise subject.fail(name, f"states {bad} have no reduction", "Declare every state with add_state().")
    result = call(subject, name, "compute()", inst.compute)
    if not isinstance(result, MetricResult):
        raise subject.fail(name, f"compute() returned {type(result).__name__}", "Return a MetricResult.")
    if not all(isinstance(v, float | int) and not isinstance(v, bool) for v in result.scalars.values()):
        raise subject.fail(name, f"compute() scalars are not all numbers: {result.scalars}",
                           "Report Python floats (call .item() or float() in compute).")
    declared = list(type(inst).metric_names(subject.params, topk))
    if sorted(declared) != sorted(result.scalars):
        raise subject.fail(name, f"metric_names() says {declared} but compute() reported {sorted(result.scalars)}",
                           "Make metric_names() list exactly the scalar keys compute() returns "
                           "(train.best_metric is checked against it).")


def _check_head(subject: Subject, inst: Any, args: tuple[Any, ...]) -> None:
    name = "check_forward_contract"
    (feats, targets), _ = with_grad_inputs(args[:2])  # as in training: features carry grad
    inst.eval()
    with torch.no_grad():
        scores = call(subject, name, f"predict({shape_of(feats)})", lambda: inst.predict(feats))
    n = BATCH
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.shape[0] != n:
        raise subject.fail(name, f"predict() returned {shape_of(scores)}; expected scores of shape (N, C) = ({n}, C)",
                           "Return one row of class scores per sample; take feats[-1] (the last level) "
                           "from the tuple, not a sample.")
    classes = subject.params.get("num_classes")
    if isinstance(classes, int) and scores.shape[1] != classes:
        raise subject.fail(name, f"predict() returned {scores.shape[1]} columns but num_classes is {classes}",
                           "Size the classifier by num_classes.")
    inst.train()
    out = call(subject, name, f"loss({shape_of(feats)}, targets)", lambda: inst.loss(feats, targets))
    if not isinstance(out, Mapping) or "loss" not in out:
        raise subject.fail(name, f"loss() returned {shape_of(out)}; the head contract is a dict whose 'loss' entry is "
                           "the total to optimise", "Return {'loss': total, ...} (other keys are only logged).")
    require_scalar(subject, name, out["loss"], "loss()['loss']", grad=True)
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
    value = call(subject, name, f"forward({shape_of(pred)}, {shape_of(args[1])})",
                  lambda: inst(pred, args[1], reduction_override="mean"))
    require_scalar(subject, name, value, "the mean-reduced loss", grad=True)


def _check_model(subject: Subject, inst: Any, args: tuple[Any, ...]) -> None:
    name = "check_forward_contract"
    inputs, targets = args[0], args[1]
    inst.train()
    out = call(subject, name, f"loss({shape_of(inputs)}, targets)", lambda: inst.loss(inputs, targets))
    if not isinstance(out, Mapping) or "loss" not in out:
        raise subject.fail(name, f"loss() returned {shape_of(out)}; the model contract is a dict with an explicit "
                           "'loss' total", "Return {'loss': total, ...}; other keys are only logged, never summed.")
    require_scalar(subject, name, out["loss"], "loss()['loss']", grad=True)
    inst.eval()
    with torch.no_grad():
        try:
            pred = inst.predict(inputs)
        except Exception as exc:
            if not is_pretext_error(exc):
                raise subject.fail(name, f"predict() raised {type(exc).__name__}: {exc}",
                                   "Return a dict of predictions, or raise PretrainError for a pretext task.") from exc
            feats = call(subject, name, "extract_feat(inputs)", lambda: inst.extract_feat(inputs))
            if not tensors(feats):
                raise subject.fail(name, f"extract_feat() returned {shape_of(feats)}",
                                   "Return the backbone features.") from exc
            return
    if not isinstance(pred, Mapping):
        raise subject.fail(name, f"predict() returned {shape_of(pred)}", "Return a dict (classifiers: scores, labels).")
    scores, labels = pred.get("scores"), pred.get("labels")
    n = BATCH
    if scores is not None and (not isinstance(scores, torch.Tensor) or scores.shape[:1] != (n,)
                               or scores.dim() != 2 or not scores.is_floating_point()):
        raise subject.fail(name, f"predict()['scores'] is {shape_of(scores)}", "Return float scores of shape (N, C).")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != (n,)
                               or labels.dtype != torch.long):
        raise subject.fail(name, f"predict()['labels'] is {shape_of(labels)}", "Return int64 labels of shape (N,).")


def _first_difference(first: list[Tensor], second: list[Tensor]) -> tuple[int, float, str] | None:
    """``(index, max diff, first differing values)`` of the first output pair not bitwise equal."""
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        if not close(a, b, exact=True):
            return i, max_diff(a, b), first_differences(a, b, exact=True)
    return None


def check_deterministic_eval(subject: Subject) -> None:
    """Two eval-mode calls on the same input give identical outputs."""
    inst = subject.build()
    args = subject.example_inputs(inst)
    inst.eval()
    first = call(subject, "check_deterministic_eval", "the eval call", lambda: eval_output(subject, inst, args))
    second = eval_output(subject, inst, args)  # RNG state moved on: random eval behaviour shows
    diff = _first_difference(tensors(first), tensors(second))
    if diff is not None:
        raise subject.fail(
            "check_deterministic_eval",
            f"two eval-mode calls on the same input differ (output {diff[0]}, max diff {diff[1]:.3g}; "
            f"{diff[2]})",
            "Sample randomness only when self.training is true (dropout, drop-path, masking, noise).",
        )


def check_batch_independence(subject: Subject) -> None:
    """In eval mode, sample i's output does not depend on the other samples of the batch."""
    name = "check_batch_independence"
    inst = subject.build()
    args = subject.example_inputs(inst)
    inst.eval()
    torch.manual_seed(7)
    full = tensors(call(subject, name, "the eval call", lambda: eval_output(subject, inst, args)))
    compared = 0
    for i in range(BATCH):
        torch.manual_seed(7)
        single = tensors(eval_output(subject, inst, slice_batch(args, i, BATCH)))
        for j, (a, b) in enumerate(zip(full, single, strict=False)):
            if a.dim() == 0 or a.shape[0] != BATCH or b.dim() == 0 or b.shape[0] != 1:
                continue
            compared += 1
            if not close(a[i], b[0]):
                raise subject.fail(
                    name,
                    f"sample {i}'s output {j} changes by {max_diff(a[i], b[0]):.3g} when the other samples "
                    f"are in the batch (alone vs in the batch: {first_differences(b[0], a[i])})",
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
    outs: list[list[Tensor]] = []
    for module in (source, target):
        module.eval()
        torch.manual_seed(3)
        run_eval = functools.partial(eval_output, subject, module, args)
        outs.append(tensors(call(subject, name, "the eval call", run_eval)))
    diff = _first_difference(*outs)
    if diff is not None:
        raise subject.fail(
            name, f"after loading the weights, output {diff[0]} differs by {diff[1]:.3g} ({diff[2]})",
            "State that affects the output must be a parameter or a persistent buffer "
            "(or derived from the config), so that checkpoints restore it.",
        )


def check_gradients(subject: Subject) -> None:
    """One training objective reaches every trainable parameter (and the inputs, for necks/heads/losses)."""
    name = "check_gradients"
    inst = subject.build()
    raw = subject.example_inputs(inst)
    inst.train()
    args, leaves = with_grad_inputs(raw) if subject.kind in ("neck", "head", "loss") else (raw, [])
    torch.manual_seed(5)
    objective = call(subject, name, "the training objective", lambda: training_objective(subject, inst, args))
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


# ---------------------------------------------------------------------------- registry of checks

CHECKS: dict[str, Callable[[Subject], None]] = {
    "check_schema": check_schema,
    "check_documentation": check_documentation,
    "check_example_config": check_example_config,
    "check_meta_build": check_meta_build,
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
    if not KIND_INFO[kind].spec:
        yield from ("check_documentation", "check_import_side_effects")
        return
    yield from ("check_schema", "check_documentation", "check_example_config", "check_import_side_effects")
    if kind == "metric":
        yield "check_forward_contract"
    if kind not in MODULE_KINDS:
        return
    yield from ("check_meta_build", "check_forward_contract")
    if kind != "batch_augment":  # batch augments mix samples at random by definition
        yield from ("check_deterministic_eval", "check_batch_independence")
    yield "check_state_dict_roundtrip"
    if kind not in ("target_generator", "batch_augment"):  # both run under no_grad
        yield "check_gradients"
    if kind == "loss":
        yield from ("check_loss_weight", "check_loss_reduction", "check_loss_avg_factor",
                    "check_loss_weight_scaling")
