"""The pluggy plugin manager: loads ``pretrain.plugins`` entry points in isolation."""

from __future__ import annotations

import threading
from typing import Any

import pluggy

from pretrain import hookspecs
from pretrain.errors import PluginLoadError
from pretrain.registry.registry import EntryRecord, Registry, _import_value, get_registry

__all__ = ["get_plugin_manager", "load_plugins", "reset_plugin_manager"]

_PM: pluggy.PluginManager | None = None
_LOADED_FOR: Registry | None = None
_LOCK = threading.RLock()


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("pretrain")
    pm.add_hookspecs(hookspecs)
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (third-party hook plugins loaded on first use)."""
    return load_plugins()


def reset_plugin_manager() -> None:
    """Drop the manager so the next use reloads plugins (tests)."""
    global _PM, _LOADED_FOR
    with _LOCK:
        _PM, _LOADED_FOR = None, None


def load_plugins(registry: Registry | None = None) -> pluggy.PluginManager:
    """Import every ``pretrain.plugins`` entry point once and run their registration hooks.

    A plugin that fails to import, or whose hooks do not match the specs, is recorded
    in the registry's failures (and raised under ``PRETRAIN_STRICT_PLUGINS=1``);
    the others keep working.
    """
    global _PM, _LOADED_FOR
    registry = registry or get_registry()
    with _LOCK:
        if _PM is not None and _LOADED_FOR is registry:
            return _PM
        pm = _new_manager()
        for record in registry.plugin_entry_points():
            _register_one(pm, registry, record)
        _PM, _LOADED_FOR = pm, registry
        return pm


def _register_one(pm: pluggy.PluginManager, registry: Registry, record: EntryRecord) -> None:
    plugin: Any = None
    try:
        plugin = _import_value(record.value, allow_module=True)
        pm.register(plugin, name=record.qualified_name)
        pm.check_pending()
    except Exception as exc:
        if plugin is not None and pm.is_registered(plugin):
            pm.unregister(plugin)
        registry.record_failure(record, f"{type(exc).__name__}: {exc}")
        if registry.is_strict:
            raise PluginLoadError(
                f"hook plugin {record.name} = {record.value} from {record.distribution} "
                f"{record.version} failed: {exc}"
            ) from exc
        return
    register_hook = getattr(plugin, "pretrain_register_components", None)
    if register_hook is None:
        return

    def register(kind: str, name: str, obj: Any) -> None:
        registry.register(
            kind, name, obj, distribution=record.distribution, version=record.version, source="hook"
        )

    try:
        register_hook(register=register)
    except Exception as exc:
        registry.record_failure(record, f"pretrain_register_components: {type(exc).__name__}: {exc}")
        if registry.is_strict:
            raise PluginLoadError(
                f"hook plugin {record.qualified_name} failed to register components: {exc}"
            ) from exc
