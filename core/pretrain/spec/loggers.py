"""The ``[train.loggers]`` table: one sub-table per experiment tracker (torch-free).

::

    [train.loggers.tensorboard]           # pip install 'pretrain[tensorboard]'
    [train.loggers.mlflow]                # pip install 'pretrain[mlflow]'
    tracking_uri = "file:./mlruns"
    [train.loggers.wandb]                 # pip install 'pretrain[wandb]'
    mode = "offline"

Trackers are hook plugins (entry-point group ``pretrain.plugins``): each declares
the names it handles and the pydantic model of their tables through the
``pretrain_logger_schemas`` hook, so a third-party package adds a tracker the same
way the built-in ones do. An unknown name gets a did-you-mean over the installed
trackers; a tracker whose package is missing fails here, before anything runs,
with the ``pip install`` command.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from pretrain.errors import did_you_mean
from pretrain.spec.context import ValidationContext

__all__ = ["logger_schemas", "loggers_json_schema", "validate_loggers"]


def logger_schemas() -> dict[str, type[BaseModel]]:
    """Every installed tracker name and the model of its ``[train.loggers.<name>]`` table."""
    from pretrain.registry.plugins import get_plugin_manager

    out: dict[str, type[BaseModel]] = {}
    for result in get_plugin_manager().hook.pretrain_logger_schemas():
        out.update(result or {})
    return out


def validate_loggers(raw: Any, ctx: ValidationContext, loc: str = "train.loggers") -> dict[str, BaseModel] | None:
    """Validate the ``[train.loggers]`` table; issues go to ``ctx`` with their paths.

    Returns:
        Tracker name -> validated config, or None when anything is wrong.

    """
    if not isinstance(raw, Mapping):
        ctx.add(loc, f"must be a table of trackers (e.g. [{loc}.tensorboard]), got {type(raw).__name__}")
        return None
    schemas = logger_schemas()
    before = len(ctx.issues)
    out: dict[str, BaseModel] = {}
    for name, given in raw.items():
        where = f"{loc}.{name}"
        table = {} if given is True else given  # `tensorboard = true`: the defaults
        model = schemas.get(name)
        if model is None:
            known = ", ".join(sorted(schemas)) or "none installed"
            ctx.add(where, f"unknown tracker {name!r}{did_you_mean(name, list(schemas))} (installed trackers: "
                    f"{known}; a package adds one through the pretrain_logger_schemas hook)")
            continue
        if not isinstance(table, Mapping):
            ctx.add(where, f"must be a table of the tracker's options (or true), got {type(table).__name__}")
            continue
        try:
            out[name] = model.model_validate(dict(table))
        except ValidationError as exc:
            ctx.add_pydantic(exc, where, model)
    return out if len(ctx.issues) == before else None


def loggers_json_schema(description: str = "") -> dict[str, Any]:
    """JSON Schema of ``[train.loggers]``: one property per installed tracker (for ``pretrain schema``)."""
    properties = {}
    for name, model in sorted(logger_schemas().items()):
        schema = model.model_json_schema()
        schema.pop("title", None)
        properties[name] = {"anyOf": [schema, {"const": True}]}
    return {"type": "object", "description": description, "properties": properties, "additionalProperties": False}
