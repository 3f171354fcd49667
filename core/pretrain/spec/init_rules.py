"""Weight-initialisation rules: the ``init`` key of every component table (torch-free).

Provenance: MMEngine's ``init_cfg`` (``mmengine/model/weight_init.py``). The rule
types, their arguments and defaults, ``layer`` matching (class name or a *direct*
base class name, so ``_BatchNorm`` catches ``BatchNorm2d``), ``override`` (a named
child, whole-module init) and ``bias_prob`` are MMEngine's. Where MMEngine is silent
we fail loudly: a value rule with neither ``layer`` nor ``override`` is a validation
error (MMEngine initialises nothing and says nothing). This module only *validates*
rules; :mod:`pretrain.assembly.weight_init` applies them and
:mod:`pretrain.assembly.pretrained` loads ``Pretrained`` checkpoints.
"""

from __future__ import annotations

import errno
import math
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

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

from pretrain.spec.paths import clean_loc

__all__ = [
    "INIT_RULES_ADAPTER",
    "Constant",
    "ConstantFields",
    "Kaiming",
    "KaimingFields",
    "Normal",
    "NormalFields",
    "OverrideName",
    "Pretrained",
    "Rule",
    "TruncNormal",
    "TruncNormalFields",
    "Uniform",
    "UniformFields",
    "ValueFields",
    "ValueRule",
    "Xavier",
    "XavierFields",
    "checkpoint_problem",
    "init_rules_json_schema",
    "rule_to_toml",
    "validate_init",
]

# ----------------------------------------------------------------------------- rule models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValueFields(_Strict):
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


class ConstantFields(ValueFields):
    """Fields of ``Constant`` (rule and override)."""

    val: float = Field(description="Value the weight is filled with.")


class XavierFields(ValueFields):
    """Fields of ``Xavier`` (rule and override)."""

    gain: float = Field(1.0, description="Scaling factor (torch.nn.init.xavier_*).")
    distribution: Literal["normal", "uniform"] = Field("normal", description="Distribution.")


class NormalFields(ValueFields):
    """Fields of ``Normal`` (rule and override)."""

    mean: float = Field(0.0, description="Mean of the normal distribution.")
    std: Annotated[float, Field(ge=0)] = Field(1.0, description="Standard deviation.")


class TruncNormalFields(ValueFields):
    """Fields of ``TruncNormal`` (rule and override)."""

    mean: float = Field(0.0, description="Mean of the normal distribution.")
    std: Annotated[float, Field(ge=0)] = Field(1.0, description="Standard deviation.")
    a: float = Field(-2.0, description="Lower cut-off (absolute value, like torch).")
    b: float = Field(2.0, description="Upper cut-off (absolute value, like torch).")

    @model_validator(mode="after")
    def _check_bounds(self) -> TruncNormalFields:
        if self.a >= self.b:
            raise ValueError(f"the lower cut-off a={self.a} must be below b={self.b}")
        return self


class UniformFields(ValueFields):
    """Fields of ``Uniform`` (rule and override)."""

    a: float = Field(0.0, description="Lower bound.")
    b: float = Field(1.0, description="Upper bound.")

    @model_validator(mode="after")
    def _check_bounds(self) -> UniformFields:
        if self.a > self.b:
            raise ValueError(f"the lower bound a={self.a} must not exceed b={self.b}")
        return self


class KaimingFields(ValueFields):
    """Fields of ``Kaiming`` (rule and override)."""

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


class ConstantOverride(ConstantFields):
    """``Constant`` applied to every module inside child ``name``."""

    type: Literal["Constant"] = "Constant"
    name: str


class XavierOverride(XavierFields):
    """``Xavier`` applied to every module inside child ``name``."""

    type: Literal["Xavier"] = "Xavier"
    name: str


class NormalOverride(NormalFields):
    """``Normal`` applied to every module inside child ``name``."""

    type: Literal["Normal"] = "Normal"
    name: str


class TruncNormalOverride(TruncNormalFields):
    """``TruncNormal`` applied to every module inside child ``name``."""

    type: Literal["TruncNormal"] = "TruncNormal"
    name: str


class UniformOverride(UniformFields):
    """``Uniform`` applied to every module inside child ``name``."""

    type: Literal["Uniform"] = "Uniform"
    name: str


class KaimingOverride(KaimingFields):
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


class Constant(ConstantFields, _Targeted):
    """Fill weights with ``val`` and biases with ``bias``."""

    type: Literal["Constant"] = "Constant"


class Xavier(XavierFields, _Targeted):
    """Xavier/Glorot initialisation (``torch.nn.init.xavier_normal_`` / ``_uniform_``)."""

    type: Literal["Xavier"] = "Xavier"


class Normal(NormalFields, _Targeted):
    """Normal distribution N(mean, std²)."""

    type: Literal["Normal"] = "Normal"


class TruncNormal(TruncNormalFields, _Targeted):
    """Truncated normal distribution N(mean, std²) cut to [a, b]."""

    type: Literal["TruncNormal"] = "TruncNormal"


class Uniform(UniformFields, _Targeted):
    """Uniform distribution U(a, b)."""

    type: Literal["Uniform"] = "Uniform"


class Kaiming(KaimingFields, _Targeted):
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
    checkpoint: str = Field(description="Path of a .safetensors (preferred) or .pth/.pt file (tensors only), "
                            "or the *.index.json of a sharded (FSDP) checkpoint.")
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


def checkpoint_problem(checkpoint: str | None) -> str | None:
    """What is wrong with a ``Pretrained`` rule's ``checkpoint`` path right now, or None.

    Relative paths are resolved from the current directory (as when the file is loaded).
    """
    if checkpoint is None:
        return None
    if not checkpoint.strip():
        return ("is empty (MMPretrain's fine-tuning configs ship checkpoint = ''); set it to the "
                "pretrained weights, a .safetensors (or tensors-only .pth) file")
    path = Path(checkpoint).expanduser()
    where = "" if path.is_absolute() else f" (relative paths are resolved from the current directory, {Path.cwd()})"
    try:
        info = path.stat()
    except FileNotFoundError:
        return f"the file {checkpoint!r} does not exist{where}"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{checkpoint!r} is a symbolic link that loops back on itself"
        return f"cannot read {checkpoint!r}: {exc.strerror or exc}"
    if stat.S_ISDIR(info.st_mode):
        return (f"{checkpoint!r} is a directory; name the weights file inside it (e.g. a run's "
                "checkpoints/best.safetensors)")
    if not stat.S_ISREG(info.st_mode):
        return f"{checkpoint!r} is not a regular file (a device, pipe or socket)"
    return None


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


def _without_tags(exc: ValidationError) -> ValidationError:
    """The same error with union-member tags dropped from locations.

    ``[0, "Normal", "std"]`` becomes ``[0, "std"]`` so paths read like the spec
    (``model.backbone.init[0].std``).
    """
    details: list[Any] = []
    for err in exc.errors(include_url=False):
        parts, _ = clean_loc(list[Rule], err["loc"])
        detail: dict[str, Any] = {"type": err["type"], "loc": tuple(parts), "input": err["input"]}
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


