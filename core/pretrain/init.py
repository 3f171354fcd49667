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
from dataclasses import dataclass, field
from pathlib import Path
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

from pretrain._errors import PretrainError

if TYPE_CHECKING:
    from rich.console import Console
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
    checkpoint: str = Field(
        description="Path of a .safetensors (preferred) or .pth/.pt file (tensors only)."
    )
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
                raise ValueError(
                    f"key_map[{i}]: invalid regular expression {pattern!r}: {exc}"
                ) from exc
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


_TAGS = frozenset(
    {"name", "Constant", "Xavier", "Normal", "TruncNormal", "Uniform", "Kaiming", "Pretrained"}
)


def _without_tags(exc: ValidationError) -> ValidationError:
    """Drop pydantic's union-tag segments from error locations.

    ``[0, "Normal", "std"]`` becomes ``[0, "std"]`` so paths read like the spec
    (``model.backbone.init[0].std``). Every list in an ``init`` value holds tagged
    tables, so a tag is exactly a tag name right after a list index.
    """
    details: list[Any] = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        kept = [
            p
            for i, p in enumerate(loc)
            if not (i > 0 and isinstance(loc[i - 1], int) and p in _TAGS)
        ]
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
    out: dict[str, Any] = {}
    if "type" in type(model).model_fields:
        out["type"] = model.type  # type: ignore[attr-defined]
    for name in type(model).model_fields:
        if name == "type" or name not in model.model_fields_set:
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
    import torch  # noqa: PLC0415 - this module is imported by torch-free validation

    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) else None


def _has_weight_or_bias(module: nn.Module) -> bool:
    return _own_tensor(module, "weight") is not None or _own_tensor(module, "bias") is not None


def _init_module(module: nn.Module, rule: BaseModel) -> None:
    """Initialise ``module.weight``/``module.bias`` with ``rule`` (MMEngine ``*_init``)."""
    from torch.nn import init  # noqa: PLC0415

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


def _apply_value_rule(module: nn.Module, rule: ValueRule, loc: str, index: int) -> None:
    import torch  # noqa: PLC0415

    where = f"{loc}.init[{index}]"
    with torch.no_grad():
        if rule.layer:
            wanted = set(rule.layer)
            matched = [m for m in module.modules() if _class_names(m) & wanted]
            if not matched:
                raise PretrainError(
                    f"{where}: the init rule {rule_to_toml(rule)} matches no layer in "
                    f"{type(module).__name__}. Layer classes present: {_available(module)}.",
                    hint="Fix `layer` to one of the class names above (names are "
                    "case-sensitive; a base-class name such as '_BatchNorm' also matches).",
                )
            if not any(_has_weight_or_bias(m) for m in matched):
                found = sorted({type(m).__name__ for m in matched})
                raise PretrainError(
                    f"{where}: the init rule {rule_to_toml(rule)} matches only "
                    f"{', '.join(found)}, which have no weight or bias to initialise.",
                    hint="Target layers with parameters (e.g. Conv2d, Linear, BatchNorm2d).",
                )
            # ``Module.apply`` order (children first) as in MMEngine, so the RNG stream
            # and therefore the values match an MMEngine init under the same seed.
            module.apply(lambda m: _init_module(m, rule) if _class_names(m) & wanted else None)
        for entry in rule.override or ():
            name = entry.name
            child = _get_child(module, name)
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


def apply_init(module: nn.Module, rules: Sequence[Rule], *, loc: str, pretrained: bool) -> None:
    """Apply a component's init rules.

    Args:
        module: The built component.
        rules: Validated rules (see :func:`validate_init`).
        loc: Spec path of the component (``model.backbone``) or of its ``init`` key
            (``model.backbone.init``), used in messages.
        pretrained: ``False`` applies the value rules (in order) and skips
            ``Pretrained``; ``True`` applies only the ``Pretrained`` rules.

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
            _apply_value_rule(module, rule, base, index)
            _log.debug("%s.init[%d]: applied %s", base, index, rule_to_toml(rule))


# ----------------------------------------------------------------------------- pretrained


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        checkpoint: The file read.
        loaded: Component keys that were filled from the checkpoint.
        missing: Component keys the checkpoint lacks.
        unexpected: Checkpoint keys (after ``key_map``/``prefix``) the component lacks.
        mismatched: Keys present in both whose shapes differ.
        shapes: ``key -> (checkpoint shape, component shape)`` for ``mismatched``.

    """

    checkpoint: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """True when every key matched."""
        return not (self.missing or self.unexpected or self.mismatched)


def _err_console() -> Console:
    try:
        from pretrain.cli._console import err_console  # noqa: PLC0415

        return err_console
    except ImportError:
        from rich.console import Console  # noqa: PLC0415

        return Console(stderr=True)


def _read_checkpoint(path: Path, rule: Pretrained, loc: str) -> dict[str, Tensor]:
    import torch  # noqa: PLC0415

    if not path.is_file():
        raise PretrainError(
            f"{loc}: pretrained checkpoint {str(path)!r} does not exist.",
            hint="Check the path (relative paths are resolved from the current directory).",
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file  # noqa: PLC0415

        try:
            return load_file(str(path), device=rule.map_location)
        except Exception as exc:
            raise PretrainError(f"{loc}: cannot read {str(path)!r}: {exc}") from exc
    if suffix in {".pth", ".pt", ".bin", ".ckpt"}:
        try:
            obj = torch.load(path, map_location=rule.map_location, weights_only=True)
        except Exception as exc:
            raise PretrainError(
                f"{loc}: cannot read {str(path)!r} as a tensors-only checkpoint "
                f"(torch.load(weights_only=True) refused it: {str(exc).splitlines()[0]}).",
                hint="Pickled Python objects are never loaded; convert the file with "
                "`pretrain convert-weights` or save a plain state_dict / .safetensors.",
            ) from exc
        # MMEngine/timm checkpoints nest the weights under "state_dict" or "model".
        for key in ("state_dict", "model"):
            if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        if not isinstance(obj, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in obj.values()
        ):
            raise PretrainError(f"{loc}: {str(path)!r} does not hold a state dict of tensors.")
        return dict(obj)
    raise PretrainError(
        f"{loc}: unsupported checkpoint format {path.suffix!r} ({str(path)!r}).",
        hint="Use a .safetensors file (or .pth/.pt holding a plain state_dict).",
    )


def _remap(state: dict[str, Tensor], rule: Pretrained, loc: str, path: str) -> dict[str, Tensor]:
    patterns = [(re.compile(p), r) for p, r in rule.key_map]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = key
        for pattern, repl in patterns:
            new = pattern.sub(repl, new)
        if not new:
            continue  # mapped to "": dropped on purpose
        if new in out:
            raise PretrainError(
                f"{loc}: key_map sends two checkpoint keys to {new!r} (one is {key!r}).",
                hint="Make the key_map rules injective.",
            )
        out[new] = value
    if rule.prefix is None:
        return out
    selected = {k[len(rule.prefix) :]: v for k, v in out.items() if k.startswith(rule.prefix)}
    if not selected:
        heads = sorted({k.split(".", 1)[0] + "." for k in out})
        raise PretrainError(
            f"{loc}: no checkpoint key starts with prefix {rule.prefix!r} in {path!r}. "
            f"Top-level prefixes present: {', '.join(map(repr, heads[:20])) or '(none)'}.",
            hint="Set `prefix` to one of those (or leave it out to load the whole file).",
        )
    return selected


def _run_pre_hooks(module: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Run the modules' load-state-dict pre-hooks on a copy, as ``load_state_dict`` does.

    Hooks may adapt entries (a ViT resizing ``pos_embed`` to its own grid); running
    them first lets shapes be compared the way torch would see them. They run again
    inside ``load_state_dict``, so they must be idempotent (torch requires it anyway
    for repeated loads).
    """
    state = dict(state)
    for name, sub in module.named_modules():
        hooks = getattr(sub, "_load_state_dict_pre_hooks", {})
        prefix = f"{name}." if name else ""
        for hook in list(hooks.values()):
            hook(state, prefix, {}, True, [], [], [])
    return state


def _short(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _print_report(report: LoadReport, loc: str) -> None:
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"Pretrained weights for {loc}: {report.checkpoint}", title_justify="left")
    table.add_column("status")
    table.add_column("keys", justify="right")
    table.add_column("examples", overflow="fold")
    mism = [
        f"{k} {tuple(report.shapes[k][0])}→{tuple(report.shapes[k][1])}" for k in report.mismatched
    ]
    rows = [
        ("loaded", report.loaded, "green"),
        ("missing", report.missing, "yellow"),
        ("unexpected", report.unexpected, "yellow"),
        ("shape mismatch", mism, "red"),
    ]
    for label, keys, style in rows:
        table.add_row(
            label,
            str(len(keys)),
            _short(keys, 4) if label != "loaded" else "",
            style=style if keys and label != "loaded" else None,
        )
    _err_console().print(table)


def load_pretrained(module: nn.Module, rule: Pretrained, *, loc: str) -> LoadReport:
    """Load ``rule.checkpoint`` into ``module`` and print a summary table (stderr).

    Args:
        module: The component to fill.
        rule: The validated ``Pretrained`` rule.
        loc: Spec path of the rule (``model.backbone.init[0]``) for messages.

    Returns:
        The :class:`LoadReport`; under ``strict`` it is always clean.

    Raises:
        PretrainError: Empty or missing path, unreadable file, ``prefix`` matching no
            key, or (``strict``) any missing / unexpected / mismatched key. Nothing is
            loaded when an error is raised.

    """
    if not rule.checkpoint.strip():
        raise PretrainError(
            f"{loc}: the Pretrained rule has an empty `checkpoint` path.",
            hint=f"Set it, e.g. with --set '{loc.rsplit('.init', 1)[0]}.init="
            f'[{{type = "Pretrained", checkpoint = "PATH.safetensors"'
            + (f', prefix = "{rule.prefix}"' if rule.prefix else "")
            + "}]'.",
        )
    path = Path(rule.checkpoint).expanduser()
    state = _remap(_read_checkpoint(path, rule, loc), rule, loc, str(path))
    state = _run_pre_hooks(module, state)
    own = module.state_dict()
    report = LoadReport(checkpoint=str(path))
    # Lists follow the component's own key order; unexpected keys are sorted.
    for key, tensor in own.items():
        value = state.get(key)
        if value is None:
            report.missing.append(key)
        elif tuple(value.shape) != tuple(tensor.shape):
            report.mismatched.append(key)
            report.shapes[key] = (tuple(value.shape), tuple(tensor.shape))
        else:
            report.loaded.append(key)
    report.unexpected = sorted(k for k in state if k not in own)
    _print_report(report, loc)
    if rule.strict and not report.clean:
        parts = []
        if report.missing:
            parts.append(f"missing {_short(report.missing)}")
        if report.unexpected:
            parts.append(f"unexpected {_short(report.unexpected)}")
        if report.mismatched:
            shapes = [
                f"{k} {report.shapes[k][0]} vs {report.shapes[k][1]}" for k in report.mismatched
            ]
            parts.append(f"shape mismatch (checkpoint vs model) {_short(shapes)}")
        raise PretrainError(
            f"{loc}: {str(path)!r} does not match {type(module).__name__} under "
            f"strict loading: {'; '.join(parts)}.",
            hint="Fix `prefix`/`key_map`, or set `strict = false` to load only the keys "
            "that match (the rest keep their initialisation).",
        )
    if report.loaded:
        module.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    else:
        raise PretrainError(
            f"{loc}: no key of {str(path)!r} matches {type(module).__name__}; nothing "
            "would be loaded.",
            hint="Check `prefix` and `key_map` against the key names in the table above.",
        )
    return report
