"""pretrain: typed, plugin-based building, pretraining and fine-tuning of vision models.

The package namespace is lazy (PEP 562): ``import pretrain`` imports neither torch
nor pydantic; each name below is imported on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ComponentLookupError",
    "PluginError",
    "PluginLoadError",
    "PretrainError",
    "Registry",
    "SpecError",
    "SpecIssue",
    "Trainer",
    "ValidatedSpec",
    "__version__",
    "build",
    "build_model",
    "evaluate",
    "get_registry",
    "hookimpl",
    "load_spec",
    "train",
    "validate_spec",
]

_LAZY: dict[str, str] = {
    "ComponentLookupError": "pretrain.errors",
    "PluginError": "pretrain.errors",
    "PluginLoadError": "pretrain.errors",
    "PretrainError": "pretrain.errors",
    "SpecError": "pretrain.errors",
    "SpecIssue": "pretrain.errors",
    "Registry": "pretrain.registry.registry",
    "get_registry": "pretrain.registry.registry",
    "hookimpl": "pretrain.hookspecs",
    "load_spec": "pretrain.spec.files",
    "validate_spec": "pretrain.spec.validate",
    "build": "pretrain.assembly.assemble",
    "build_model": "pretrain.assembly.assemble",
    "train": "pretrain.engine.api",
    "evaluate": "pretrain.engine.api",
    "Trainer": "pretrain.engine.trainer",
}

if TYPE_CHECKING:
    from pretrain.assembly.assemble import build, build_model
    from pretrain.engine.api import evaluate, train
    from pretrain.engine.trainer import Trainer
    from pretrain.errors import (
        ComponentLookupError,
        PluginError,
        PluginLoadError,
        PretrainError,
        SpecError,
        SpecIssue,
    )
    from pretrain.hookspecs import hookimpl
    from pretrain.registry.registry import Registry, get_registry
    from pretrain.spec.files import load_spec
    from pretrain.spec.validate import ValidatedSpec, validate_spec


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pretrain' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
