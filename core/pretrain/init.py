"""Weight-initialisation rules (the ``init`` key of every component table).

Provenance: MMEngine's ``init_cfg`` (``mmengine/model/weight_init.py``,
``mmengine/model/base_module.py``). The rule types, their arguments and defaults,
``layer`` matching (class name or a *direct* base class name, so ``_BatchNorm``
catches ``BatchNorm2d``), ``override`` (a named child, whole-module init) and
``bias_prob`` are MMEngine's. Where MMEngine is silent we fail loudly:

* a value rule with neither ``layer`` nor ``override`` is a validation error
  (MMEngine initialises nothing and says nothing);
* a rule whose ``layer`` matches no module in the component (``"Conv2D"``), or
  only modules without a ``weight``/``bias``, raises :class:`PretrainError`
  naming the component and the class names that exist;
* ``Pretrained`` loads **strictly** by default (MMEngine always uses
  ``strict=False`` and only logs), reads ``.safetensors`` or ``.pth``/``.pt``
  with ``torch.load(weights_only=True)`` (never unpickles objects), prints a
  table of loaded / missing / unexpected / shape-mismatched keys, and applies
  declarative ``key_map`` rules.

The core applies rules after a component is built, top-down, in two passes:
``apply_init(..., pretrained=False)`` for every component (parents before
children, so children's rules win), then ``apply_init(..., pretrained=True)``
so that pretrained weights always land last (MMEngine's order,
``open-mmlab/mmengine#691``). Value rules draw from torch's global RNG, so a
build under ``torch.manual_seed`` is deterministic.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from pretrain._pretrained import LoadReport, load_pretrained
from pretrain.errors import PretrainError

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = [
    "INIT_RULES_ADAPTER",
    "Constant",
    "Kaiming",
    "LoadReport",
    "Normal",
    "Pretrained",
    "Rule",
    "TruncNormal",
    "Uniform",
    "ValueRule",
    "Xavier",
    "apply_init",
    "init_rules_json_schema",
    "load_pretrained",
    "rule_to_toml",
    "validate_init",
]

_log = logging.getLogger("pretrain.init")

# ----------------------------------------------------------------------------- rule models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ValueFields(_Strict):
    """Fields shared by every value initialiser (MMEngine ``BaseInit``)."""

    bias: float = Field(0.0, description="Value the bias is filled with.")
    bias_prob: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        None,
        description="If set, the bias is -log((1-p)/p) (a prior probability, as in "
        "focal-loss heads); overrides `bias`.",
    )

    def bias_value(self) -> float:
        """Return the bias fill value, taking ``bias_prob`` into account."""
        if self.bias_prob is not None:
            return -math.log((1 - self.bias_prob) / self.bias_prob)
        return self.bias


class _ConstantFields(_ValueFields):
    val: float = Field(description="Value the weight is filled with.")


class _XavierFields(_ValueFields):
    gain: float = Field(1.0, description="Scaling factor (torch.nn.init.xavier_*).")
    distribution: Literal["normal", "uniform"] = Field("normal", description="Distribution.")


class _NormalFields(_ValueFields):
    mean: float = Field(0.0, description="Mean of the normal distribution.")
    std: Annotated[float, Field(ge=0)] = Field(1.0, description="Standard deviation.")


class _TruncNormalFields(_ValueFields):
    mean: float = Field(0.0, description="Mean of the normal distribution.")
    std: Annotated[float, Field(ge=0)] = Field(1.0, description="Standard deviation.")
    a: float = Field(-2.0, description="Lower cut-off (absolute value, like torch).")
    b: float = Field(2.0, description="Upper cut-off (absolute value, like torch).")

    @model_validator(mode="after")
    def _check_bounds(self) -> _TruncNormalFields:
        if self.a >= self.b:
            raise ValueError(f"the lower cut-off a={self.a} must be below b={self.b}")
        return self


class _UniformFields(_ValueFields):
    a: float = Field(0.0, description="Lower bound.")
    b: float = Field(1.0, description="Upper bound.")

    @model_validator(mode="after")
    def _check_bounds(self) -> _UniformFields:
        if self.a > self.b:
            raise ValueError(f"the lower bound a={self.a} must not exceed b={self.b}")
        return self


class _KaimingFields(_ValueFields):
    a: float = Field(0.0, description="Negative slope of the rectifier (leaky_relu only).")
    mode: Literal["fan_in", "fan_out"] = Field("fan_out", description="Which fan to preserve.")
    nonlinearity: Literal["relu", "leaky_relu", "tanh", "sigmoid", "linear", "selu"] = Field(
        "relu", description="Non-linearity the gain is computed for."
    )
    distribution: Literal["normal", "uniform"] = Field("normal", description="Distribution.")


# An ``override`` entry: a child name (inherits the parent rule's type and values),
# ``{name = "fc"}`` (same), or ``{name = "fc", type = "Normal", std = 0.01}`` (its own rule).
class OverrideName(_Strict):
    """Override that reuses the parent rule's type and values for child ``name``."""

    name: str = Field(description="Attribute name (dotted for deeper) of the child module.")


class ConstantOverride(_ConstantFields):
    """``Constant`` applied to every module inside child ``name``."""

    type: Literal["Constant"] = "Constant"
    name: str


class XavierOverride(_XavierFields):
    """``Xavier`` applied to every module inside child ``name``."""

    type: Literal["Xavier"] = "Xavier"
    name: str


class NormalOverride(_NormalFields):
    """``Normal`` applied to every module inside child ``name``."""

    type: Literal["Normal"] = "Normal"
    name: str


class TruncNormalOverride(_TruncNormalFields):
    """``TruncNormal`` applied to every module inside child ``name``."""

    type: Literal["TruncNormal"] = "TruncNormal"
    name: str


class UniformOverride(_UniformFields):
    """``Uniform`` applied to every module inside child ``name``."""

    type: Literal["Uniform"] = "Uniform"
    name: str


class KaimingOverride(_KaimingFields):
    """``Kaiming`` applied to every module inside child ``name``."""

    type: Literal["Kaiming"] = "Kaiming"
    name: str


def _override_tag(value: Any) -> str:
    if isinstance(value, Mapping):
        tag = value.get("type", "name")
        return tag if isinstance(tag, str) else "name"
    return str(getattr(value, "type", "name"))


_OverrideSpec: TypeAlias = Annotated[
    Annotated[OverrideName, Tag("name")]
    | Annotated[ConstantOverride, Tag("Constant")]
    | Annotated[XavierOverride, Tag("Xavier")]
    | Annotated[NormalOverride, Tag("Normal")]
    | Annotated[TruncNormalOverride, Tag("TruncNormal")]
    | Annotated[UniformOverride, Tag("Uniform")]
    | Annotated[KaimingOverride, Tag("Kaiming")],
    Discriminator(_override_tag),
]


def _as_list(value: Any) -> Any:
    """Accept a single entry where a list is expected (``layer = "Conv2d"``)."""
    return [value] if isinstance(value, str | Mapping | BaseModel) else value


def _override_entries(value: Any) -> Any:
    """Normalise ``override``: a name, a table, or a list of those -> list of tables."""
    value = _as_list(value)
    if isinstance(value, list):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


class _Targeted(_Strict):
    """``layer`` / ``override`` targeting shared by the value rules."""

    layer: list[str] | None = Field(
        None,
        description="Class name(s) of the modules to initialise (matched against the class "
        "and its direct bases, so '_BatchNorm' catches BatchNorm2d).",
    )
    override: list[_OverrideSpec] | None = Field(
        None,
        description="Child module(s) to initialise entirely: a name, {name=...} (reuse this "
        "rule), or {name=..., type=..., ...} (a rule of its own); one or a list.",
    )

    @field_validator("layer", mode="before", json_schema_input_type=str | list[str] | None)
    @classmethod
    def _layer_list(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator(
        "override",
        mode="before",
        json_schema_input_type=str | _OverrideSpec | list[str | _OverrideSpec] | None,
    )
    @classmethod
    def _override_list(cls, value: Any) -> Any:
        return _override_entries(value)

    @field_validator("layer")
    @classmethod
    def _nonempty_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not n for n in value):
            raise ValueError("layer names must be non-empty class names")
        return value

    @model_validator(mode="after")
    def _needs_a_target(self) -> _Targeted:
        # MMEngine silently initialises nothing for such a rule; we refuse it.
        if not self.layer and not self.override:
            raise ValueError(
                "this rule targets nothing: give `layer` (class names, e.g. layer = "
                "['Conv2d']) and/or `override` (a child name, e.g. override = 'fc')"
            )
        return self


class Constant(_ConstantFields, _Targeted):
    """Fill weights with ``val`` and biases with ``bias``."""

    type: Literal["Constant"] = "Constant"


class Xavier(_XavierFields, _Targeted):
    """Xavier/Glorot initialisation (``torch.nn.init.xavier_normal_`` / ``_uniform_``)."""

    type: Literal["Xavier"] = "Xavier"


class Normal(_NormalFields, _Targeted):
    """Normal distribution N(mean, std²)."""

    type: Literal["Normal"] = "Normal"


class TruncNormal(_TruncNormalFields, _Targeted):
    """Truncated normal distribution N(mean, std²) cut to [a, b]."""

    type: Literal["TruncNormal"] = "TruncNormal"


class Uniform(_UniformFields, _Targeted):
    """Uniform distribution U(a, b)."""

    type: Literal["Uniform"] = "Uniform"


class Kaiming(_KaimingFields, _Targeted):
    """Kaiming/He initialisation (``torch.nn.init.kaiming_normal_`` / ``_uniform_``)."""

    type: Literal["Kaiming"] = "Kaiming"


class Pretrained(_Strict):
    """Load weights from a checkpoint into the component (applied after every value rule).

    Keys go through ``key_map`` first (each ``[regex, replacement]`` pair is applied
    with ``re.sub`` in order; a key mapped to ``""`` is dropped), then ``prefix``
    selects the keys under it and strips it. Load-state-dict pre-hooks of the
    component (e.g. a ViT's position-embedding resize) run before keys and shapes
    are compared.
    """

    type: Literal["Pretrained"] = "Pretrained"
    checkpoint: str = Field(description="Path of a .safetensors (preferred) or .pth/.pt file (tensors only).")
    prefix: str | None = Field(
        None,
        description="Only keys under this prefix are used, with the prefix stripped "
        "(e.g. 'backbone.' to take a classifier's backbone); a trailing '.' is added.",
    )
    strict: bool = Field(
        True,
        description="Fail on any missing, unexpected or shape-mismatched key (otherwise "
        "load what matches and report the rest).",
    )
    key_map: list[tuple[str, str]] = Field(
        default_factory=lambda: [(r"^module\.", "")],
        description="[regex, replacement] rules applied to checkpoint keys in order; the "
        "default strips a DistributedDataParallel 'module.' prefix. A key mapped to '' "
        "is dropped.",
    )
    map_location: str = Field("cpu", description="Device the checkpoint is read onto.")

    @field_validator("key_map")
    @classmethod
    def _compile(cls, value: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for i, (pattern, _) in enumerate(value):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"key_map[{i}]: invalid regular expression {pattern!r}: {exc}") from exc
        return value

    @field_validator("prefix")
    @classmethod
    def _dot(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        return value if value.endswith(".") else value + "."


#: A value rule (everything but ``Pretrained``).
ValueRule: TypeAlias = Constant | Xavier | Normal | TruncNormal | Uniform | Kaiming
#: One ``init`` entry, discriminated on ``type``.
Rule: TypeAlias = Annotated[ValueRule | Pretrained, Field(discriminator="type")]

#: Validates the value of an ``init`` key (a list of rules).
INIT_RULES_ADAPTER: TypeAdapter[list[Rule]] = TypeAdapter(list[Rule])


def validate_init(value: Any) -> list[Rule]:
    """Validate an ``init`` value: a list of rule tables (a single table is accepted too).

    Raises:
        pydantic.ValidationError: With locations relative to the ``init`` value
            (the core prefixes e.g. ``model.backbone.init``).

    """
    if isinstance(value, Mapping | BaseModel):
        value = [value]
    try:
        return INIT_RULES_ADAPTER.validate_python(value)
    except ValidationError as exc:
        raise _without_tags(exc) from None


_TAGS = frozenset({"name", "Constant", "Xavier", "Normal", "TruncNormal", "Uniform", "Kaiming", "Pretrained"})


def _without_tags(exc: ValidationError) -> ValidationError:
    """Drop pydantic's union-tag segments from error locations.

    ``[0, "Normal", "std"]`` becomes ``[0, "std"]`` so paths read like the spec
    (``model.backbone.init[0].std``). Every list in an ``init`` value holds tagged
    tables, so a tag is exactly a tag name right after a list index.
    """
    details: list[Any] = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        kept = [p for i, p in enumerate(loc) if not (i > 0 and isinstance(loc[i - 1], int) and p in _TAGS)]
        detail: dict[str, Any] = {"type": err["type"], "loc": tuple(kept), "input": err["input"]}
        if "ctx" in err:
            detail["ctx"] = err["ctx"]
        details.append(detail)
    try:
        return ValidationError.from_exception_data(exc.title, details)
    except Exception:
        return exc


def init_rules_json_schema(ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """JSON Schema of an ``init`` value (an array of rules, or one rule).

    The rule models live under the returned ``$defs``; with a custom
    ``ref_template`` the caller must hoist those definitions accordingly.
    """
    schema = INIT_RULES_ADAPTER.json_schema(ref_template=ref_template)
    defs = schema.pop("$defs", {})
    one = schema["items"]
    return {"$defs": defs, "anyOf": [schema, one], "description": "Weight-init rules."}


def rule_to_toml(rule: BaseModel) -> str:
    """Render a rule as a TOML inline table of the fields it was given (for messages)."""
    return _toml_value(_rule_dict(rule))


def _rule_dict(model: BaseModel) -> dict[str, Any]:
    # Reading order: type, name, the rule's own values, then its targets.
    fields = list(type(model).model_fields)
    order = sorted(fields, key=lambda f: (f != "type", f != "name", f in ("layer", "override")))
    out: dict[str, Any] = {}
    for name in order:
        if name != "type" and name not in model.model_fields_set:
            continue
        value = getattr(model, name)
        if isinstance(value, list):
            value = [_rule_dict(v) if isinstance(v, BaseModel) else v for v in value]
        out[name] = value
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


# ----------------------------------------------------------------------------- value init


def _class_names(module: nn.Module) -> set[str]:
    """Return the class name and its *direct* bases' names (MMEngine ``_get_bases_name``)."""
    cls = type(module)
    return {cls.__name__, *(base.__name__ for base in cls.__bases__)}


def _own_tensor(module: nn.Module, name: str) -> Tensor | None:
    import torch

    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) else None


def _has_weight_or_bias(module: nn.Module) -> bool:
    return _own_tensor(module, "weight") is not None or _own_tensor(module, "bias") is not None


def _init_module(module: nn.Module, rule: BaseModel) -> None:
    """Initialise ``module.weight``/``module.bias`` with ``rule`` (MMEngine ``*_init``)."""
    from torch.nn import init

    weight = _own_tensor(module, "weight")
    bias = _own_tensor(module, "bias")
    if weight is not None and not weight.is_meta:
        if isinstance(rule, _ConstantFields):
            init.constant_(weight, rule.val)
        elif isinstance(rule, _XavierFields):
            fn = init.xavier_uniform_ if rule.distribution == "uniform" else init.xavier_normal_
            fn(weight, gain=rule.gain)
        elif isinstance(rule, _NormalFields):
            init.normal_(weight, rule.mean, rule.std)
        elif isinstance(rule, _TruncNormalFields):
            init.trunc_normal_(weight, rule.mean, rule.std, rule.a, rule.b)
        elif isinstance(rule, _UniformFields):
            init.uniform_(weight, rule.a, rule.b)
        elif isinstance(rule, _KaimingFields):
            kfn = init.kaiming_uniform_ if rule.distribution == "uniform" else init.kaiming_normal_
            kfn(weight, a=rule.a, mode=rule.mode, nonlinearity=rule.nonlinearity)
        else:  # pragma: no cover - exhaustive over the rule models
            raise TypeError(f"not a value rule: {rule!r}")
    if bias is not None and not bias.is_meta and isinstance(rule, _ValueFields):
        init.constant_(bias, rule.bias_value())


def _available(module: nn.Module) -> str:
    names = sorted({type(m).__name__ for m in module.modules()})
    return ", ".join(names)


def _apply_value_rule(module: nn.Module, rule: ValueRule, loc: str, index: int, *, strict: bool = True) -> None:
    import torch

    where = f"{loc}.init[{index}]"
    with torch.no_grad():
        if rule.layer:
            wanted = set(rule.layer)
            matched = [m for m in module.modules() if _class_names(m) & wanted]
            if not strict and not any(_has_weight_or_bias(m) for m in matched):
                matched = []  # lenient (class defaults): nothing to do for this rule
            elif not matched:
                raise PretrainError(
                    f"{where}: the init rule {rule_to_toml(rule)} matches no layer in "
                    f"{type(module).__name__}. Layer classes present: {_available(module)}.",
                    hint="Fix `layer` to one of the class names above (names are "
                    "case-sensitive; a base-class name such as '_BatchNorm' also matches).",
                )
            elif not any(_has_weight_or_bias(m) for m in matched):
                found = sorted({type(m).__name__ for m in matched})
                raise PretrainError(
                    f"{where}: the init rule {rule_to_toml(rule)} matches only "
                    f"{', '.join(found)}, which have no weight or bias to initialise.",
                    hint="Target layers with parameters (e.g. Conv2d, Linear, BatchNorm2d).",
                )
            # ``Module.apply`` order (children first) as in MMEngine, so the RNG stream
            # and therefore the values match an MMEngine init under the same seed.
            if matched:
                module.apply(lambda m: _init_module(m, rule) if _class_names(m) & wanted else None)
        for entry in rule.override or ():
            name = entry.name
            child = _get_child(module, name)
            if child is None and not strict:
                continue
            if child is None:
                children = ", ".join(n for n, _ in module.named_children()) or "(none)"
                raise PretrainError(
                    f"{where}: the init rule {rule_to_toml(rule)} overrides child {name!r}, "
                    f"but {type(module).__name__} has no such child. Children: {children}.",
                    hint="Set `override` to one of the child names above.",
                )
            sub_rule: BaseModel = rule if isinstance(entry, OverrideName) else entry
            # Whole-module init: every module inside the child, whatever its class.
            child.apply(lambda m, r=sub_rule: _init_module(m, r))  # type: ignore[misc]


def _get_child(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


def apply_init(
    module: nn.Module,
    rules: Sequence[Rule],
    *,
    loc: str,
    pretrained: bool,
    strict: bool = True,
) -> None:
    """Apply a component's init rules.

    Args:
        module: The built component.
        rules: Validated rules (see :func:`validate_init`).
        loc: Spec path of the component (``model.backbone``) or of its ``init`` key
            (``model.backbone.init``), used in messages.
        pretrained: ``False`` applies the value rules (in order) and skips
            ``Pretrained``; ``True`` applies only the ``Pretrained`` rules.
        strict: A value rule that matches no layer (or an override naming a missing
            child) is an error. ``False`` skips such rules silently; meant for a
            class's ``default_init``, whose rules may not all apply to every
            configuration of the class (user-written rules should stay strict).

    Raises:
        PretrainError: A rule matches no layer, an override names a missing child,
            or pretrained weights cannot be loaded.

    """
    # Accept the component path or its ``init`` key (``model.backbone[.init]``).
    base = loc.removesuffix(".init")
    for index, rule in enumerate(rules):
        if isinstance(rule, Pretrained):
            if pretrained:
                load_pretrained(module, rule, loc=f"{base}.init[{index}]")
        elif not pretrained:
            _apply_value_rule(module, rule, base, index, strict=strict)
            _log.debug("%s.init[%d]: applied %s", base, index, rule_to_toml(rule))
