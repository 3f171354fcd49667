"""The component under test: resolution, example config, building and example inputs.

Conventions a component may follow so that the kit can exercise it (all optional):

``example_config: ClassVar[dict[str, Any]]``
    A spec table *without* ``type`` that builds a small instance, e.g.
    ``{"in_channels": 16, "num_classes": 5}``. Nested components are tables with a
    ``type``. Without it, every required field must have a default. It is inherited,
    so a subclass of ``ResNet`` reuses ResNet's unless it declares its own.
``example_input: ClassVar[tuple[int, ...]]``
    The shape of ONE sample of the main input, without the batch dimension:
    ``(C, H, W)`` images for backbones, models and target generators, one feature
    map for necks (``(C, H, W)`` or ``(C,)``), one feature for heads, the prediction
    row ``(C,)`` for losses. Without it the kit derives the shape from the
    validated ``in_channels``/``img_size``/``num_classes`` fields (images default to
    3×32×32, neck maps to 16×4×4, head features to ``(in_channels,)``).
``def example_inputs(self, batch_size: int) -> tuple``
    Full control (multi-level features, multi-view batches, odd signatures); it
    returns the positional arguments of the call the kit makes for the kind:
    ``(images,)`` backbone/target generator, ``(feats,)`` neck, ``(feats, targets)``
    head, ``(pred, target)`` loss, ``(inputs, targets_or_None)`` model,
    ``(inputs, dense_targets)`` batch augment. Draw from torch's global RNG only:
    the kit seeds it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pretrain.assembly.assemble import build_node
from pretrain.errors import PretrainError
from pretrain.registry.kinds import KIND_INFO, KINDS
from pretrain.registry.registry import RUNTIME_DISTRIBUTION, EntryRecord, get_registry
from pretrain.registry.schema import SchemaDerivationError, component_schema
from pretrain.spec.validate import ComponentNode, ValidationContext

__all__ = ["ComponentCheckError", "Subject", "resolve_subject"]

#: Kinds whose forward contract the kit exercises (it knows how to call each one).
MODULE_KINDS = ("model", "backbone", "neck", "head", "loss", "target_generator", "batch_augment")

#: Example values of the constructor arguments the engine passes (``KindInfo.runtime_args``).
_RUNTIME_EXAMPLES: dict[str, Any] = {
    "params": lambda: [torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.zeros(4))],
}

#: Batch size of example inputs (batch independence compares it with single samples).
BATCH = 2


class ComponentCheckError(AssertionError):
    """A component broke the contract of its kind; the message says what to change.

    Attributes:
        component: ``kind:Name`` of the component.
        check: Name of the failed check (``check_batch_independence``).
        problem: What is wrong.
        fix: What the author must change.
        failures: For an aggregate error from :func:`pretrain.testing.check_component`,
            the individual failures.

    """

    def __init__(
        self,
        component: str,
        check: str,
        problem: str,
        fix: str = "",
        *,
        failures: Sequence[ComponentCheckError] = (),
    ) -> None:
        self.component = component
        self.check = check
        self.problem = problem
        self.fix = fix
        self.failures = list(failures)
        text = f"{component} fails {check}: {problem}"
        if fix:
            text += f"\n  To fix: {fix}"
        super().__init__(text)


@dataclass
class Subject:
    """A component class with its kind, registered name and example config."""

    cls: type
    kind: str
    name: str
    record: EntryRecord
    config: dict[str, Any]
    _node: ComponentNode | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """``kind:Name``, as in test ids."""
        return f"{self.kind}:{self.name}"

    def fail(self, check: str, problem: str, fix: str = "") -> ComponentCheckError:
        """An error for ``check`` (to ``raise``)."""
        return ComponentCheckError(self.label, check, problem, fix)

    # ------------------------------------------------------------------ validation / build

    def validate(self, table: Mapping[str, Any] | None = None, check: str = "check_example_config") -> ComponentNode:
        """Validate ``table`` (default: the example config) like a spec table of this kind.

        Raises:
            ComponentCheckError: The table is not valid for this component.

        """
        config = dict(self.config if table is None else table)
        config.pop("type", None)
        try:
            component_schema(self.cls, self.kind, self.name)  # a clearer failure than the validator's
        except SchemaDerivationError as exc:
            raise self.fail(check, f"no spec schema can be derived: {exc}",
                            "Annotate every keyword-only __init__ parameter with a spec-friendly type.") from None
        ctx = ValidationContext()
        # The class may not be registered (a notebook class, a test double), so validate
        # the table against this class directly rather than resolving ``type``.
        node = ctx.component_of_class(self.kind, self.cls, {"type": self.name, **config}, self.kind, name=self.name)
        if ctx.issues or node is None:
            issues = "; ".join(str(i) for i in ctx.issues)
            missing = [str(i.loc).rpartition(".")[2] for i in ctx.issues if "missing" in i.msg]
            if missing and table is None:
                fix = (
                    f"Give {self.cls.__name__} an `example_config: ClassVar[dict[str, Any]]` (a spec table "
                    f"without 'type' that builds a small instance) with a value for {', '.join(missing)}, "
                    "or give those parameters defaults."
                )
            else:
                fix = "Make the example config valid for the component's own schema (see the messages)."
            raise self.fail(check, f"the example config does not validate: {issues}", fix)
        return node

    @property
    def node(self) -> ComponentNode:
        """The validated example config (cached)."""
        if self._node is None:
            self._node = self.validate()
        return self._node

    @property
    def params(self) -> dict[str, Any]:
        """Validated plain fields of the example config, defaults filled in."""
        return dict(self.node.params)

    def build(self, *, seed: int = 0, check: str = "check_example_config",
              table: Mapping[str, Any] | None = None) -> Any:
        """Build (and initialise) an instance from the example config under ``seed``.

        Raises:
            ComponentCheckError: Validation or construction failed.

        """
        node = self.node if table is None else self.validate(table, check)
        torch.manual_seed(seed)
        try:
            runtime = KIND_INFO[self.kind].runtime_args
            if runtime:  # arguments the engine passes (an optimizer's parameter groups)
                return self.cls(*(_RUNTIME_EXAMPLES[name]() for name in runtime), **node.params)
            return build_node(node)
        except PretrainError as exc:  # a user-facing error, e.g. data files that are not there
            raise self.fail(
                check, f"building it from {self._shown(table)} raised: {exc.message}",
                (exc.hint or "Give the component what it needs in example_config.")
                + " If the example cannot run without external resources, list this check in "
                "expected_failed_checks with that reason.",
            ) from exc
        except Exception as exc:
            raise self.fail(
                check,
                f"building it from {self._shown(table)} raised {type(exc).__name__}: {exc}",
                "The config validated, so __init__ (or its init rules / post_init_weights) must "
                "accept it; move the condition into spec_issues() if the values are really invalid.",
            ) from exc

    def _shown(self, table: Mapping[str, Any] | None) -> str:
        return repr(dict(self.config if table is None else table))

    # ------------------------------------------------------------------ example inputs

    def example_inputs(self, instance: Any, batch_size: int = BATCH, *, seed: int = 1) -> tuple[Any, ...]:
        """Positional arguments of the call the kit makes for this kind (see module docs)."""
        torch.manual_seed(seed)
        custom = getattr(instance, "example_inputs", None)
        if callable(custom):
            return tuple(custom(batch_size))
        params = self.params
        n = batch_size
        if self.kind in ("backbone", "target_generator"):
            return (torch.randn(n, *self._image_shape(params)),)
        if self.kind == "model":
            channels = int(getattr(instance, "in_channels", 3) or 3)
            shape = self._declared_shape() or (channels, 32, 32)
            images = torch.rand(n, *shape) * 255  # raw 0..255 batch
            return (images, self._model_targets(instance, images))
        if self.kind == "neck":
            return (self._neck_feats(params, n),)
        if self.kind == "head":
            shape = self._declared_shape() or (_int(params.get("in_channels"), 16),)
            feats = (torch.randn(n, *shape),)
            classes = _int(params.get("num_classes"), 0) or self._classes_of(instance, feats)
            return (feats, torch.randint(0, classes, (n,)))
        if self.kind == "loss":
            shape = self._declared_shape() or (_int(params.get("num_classes"), 5),)
            pred = torch.randn(n, *shape)
            return (pred, loss_target(instance, pred))
        if self.kind == "batch_augment":
            images = torch.rand(n, *(self._declared_shape() or (3, 32, 32))) * 255
            return (images, torch.nn.functional.one_hot(torch.arange(n) % 5, 5).float())
        raise self.fail("check_forward_contract", f"the kit has no forward contract for kind {self.kind!r}")

    def _declared_shape(self) -> tuple[int, ...] | None:
        shape = getattr(self.cls, "example_input", None)
        return tuple(int(s) for s in shape) if shape is not None else None

    def _image_shape(self, params: Mapping[str, Any]) -> tuple[int, ...]:
        declared = self._declared_shape()
        if declared is not None:
            return declared
        channels = _int(params.get("in_channels"), 3)
        size = params.get("img_size", 32)
        h, w = (size, size) if isinstance(size, int) else (tuple(size) * 2)[:2]
        return (channels, int(h), int(w))

    def _neck_feats(self, params: Mapping[str, Any], n: int) -> tuple[torch.Tensor, ...]:
        declared = self._declared_shape()
        if declared is not None:
            return (torch.randn(n, *declared),)
        channels = params.get("in_channels")
        levels = list(channels) if isinstance(channels, Sequence) and not isinstance(channels, str) else [channels]
        return tuple(torch.randn(n, _int(c, 16), 4, 4) for c in levels)

    @staticmethod
    def _classes_of(instance: Any, feats: tuple[Any, ...]) -> int:
        with torch.no_grad():
            was = instance.training
            instance.eval()
            scores = instance.predict(feats)
            instance.train(was)
        return int(scores.shape[-1]) if isinstance(scores, torch.Tensor) and scores.dim() == 2 else 2

    @staticmethod
    def _model_targets(instance: Any, images: torch.Tensor) -> torch.Tensor | None:
        """Class indices for classifiers (found by one predict call), None for pretext tasks."""
        state = torch.random.get_rng_state()
        was = instance.training
        instance.eval()
        try:
            with torch.no_grad():
                out = instance.predict(images)
        except (PretrainError, NotImplementedError):
            return None
        finally:
            instance.train(was)
            torch.random.set_rng_state(state)
        scores = out.get("scores") if isinstance(out, Mapping) else None
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
            return None
        return torch.randint(0, int(scores.shape[1]), (images.shape[0],))


def loss_target(loss: Any, pred: torch.Tensor) -> torch.Tensor:
    """A target for ``pred`` (N, C) matching the loss's ``target_kind``."""
    if getattr(loss, "target_kind", "index") == "dense":
        return torch.softmax(torch.randn_like(pred), dim=-1)  # soft scores, rows sum to 1
    return torch.randint(0, pred.shape[-1], pred.shape[:1])


def _int(value: Any, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, Sequence) and value and isinstance(value[-1], int):
        return int(value[-1])
    return default


def _find_kinds(name: str) -> list[str]:
    registry = get_registry()
    bare = name.rpartition(":")[2]
    return [k for k in KINDS if any(r.name == bare for r in registry.entries(k))]


def resolve_subject(
    component: str | type | tuple[str, str],
    *,
    kind: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Subject:
    """Turn a registered name, ``(kind, name)`` or a class into a :class:`Subject`.

    Raises:
        ComponentCheckError: Unknown, ambiguous, or failing to load.

    """
    registry = get_registry()
    if isinstance(component, tuple):
        kind, component = component
    if isinstance(component, str):
        kinds = [kind] if kind else _find_kinds(component)
        if len(kinds) != 1:
            where = "no kind" if not kinds else f"the kinds {', '.join(kinds)}"
            raise ComponentCheckError(
                component, "resolve", f"the name {component!r} is registered as {where}",
                "Pass kind=... (or a (kind, name) tuple) and check the entry points.",
            )
        kind = kinds[0]
        try:
            record = registry.resolve(kind, component)
            cls = registry.load(record)
        except PretrainError as exc:
            raise ComponentCheckError(f"{kind}:{component}", "resolve", exc.message, exc.hint or "") from None
        name = record.name
    else:
        cls = component
        value = f"{cls.__module__}:{cls.__qualname__}"
        found = [r for r in registry.entries(kind) if r.value == value]
        kind = kind or getattr(cls, "component_kind", None) or (found[0].kind if found else None)
        found = [r for r in found if r.kind == kind]
        if kind not in KINDS:
            raise ComponentCheckError(
                cls.__qualname__, "resolve",
                "its kind is unknown (no component_kind attribute and not registered)",
                f"Pass kind= one of {', '.join(KINDS)}, or subclass a pretrain.components base class.",
            )
        record = found[0] if found else EntryRecord(kind, cls.__name__, value, RUNTIME_DISTRIBUTION, "0", "runtime")
        name = record.name
    if config is None:
        config = getattr(cls, "example_config", None) or {}
    return Subject(cls, kind, name, record, copy.deepcopy(dict(config)))
