"""The pluggy plugin manager: loads ``pretrain.plugins`` entry points in isolation, calls hooks safely.

A hook plugin that fails to import, whose hooks do not match the specs, whose
``pretrain_register_components`` raises, or that calls ``sys.exit()`` while doing any
of that, is recorded as broken (distribution, version, entry point, error) and the
others keep working; only ``KeyboardInterrupt`` goes through. When a hook raises
while it runs (:class:`HookCaller`), the error names the plugin and its distribution.
"""

from __future__ import annotations

import threading
from typing import Any

import pluggy

from pretrain import hookspecs
from pretrain.errors import PluginError, PluginLoadError
from pretrain.registry.records import EntryRecord
from pretrain.registry.registry import Registry, _import_value, get_registry

__all__ = ["HookCaller", "get_plugin_manager", "load_plugins", "reset_plugin_manager"]

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

    A plugin that fails is recorded in the registry's failures (and raised under
    ``PRETRAIN_STRICT_PLUGINS=1``); the others keep working.
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): the plugin called sys.exit() (argument parsing at import?)"
    return f"{type(exc).__name__}: {exc}"


def _register_one(pm: pluggy.PluginManager, registry: Registry, record: EntryRecord) -> None:
    plugin: Any = None
    try:
        plugin = _import_value(record.value, allow_module=True)
        pm.register(plugin, name=record.qualified_name)
        pm.check_pending()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: a plugin must not end the process
        if plugin is not None and pm.is_registered(plugin):
            pm.unregister(plugin)
        registry.record_failure(record, _describe(exc))
        if registry.is_strict:
            raise PluginLoadError(
                f"hook plugin {record.name} = {record.value} from {record.distribution} "
                f"{record.version} failed: {_describe(exc)}"
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
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        registry.record_failure(record, f"pretrain_register_components: {_describe(exc)}")
        if registry.is_strict:
            raise PluginLoadError(
                f"hook plugin {record.qualified_name} failed to register components: {_describe(exc)}"
            ) from exc


class HookCaller:
    """Calls the training hooks; an exception raised inside a plugin's hook names that plugin.

    Args:
        pm: The plugin manager (see :func:`get_plugin_manager`).
        registry: Where hook plugins' distributions are looked up (process-wide by default).

    """

    def __init__(self, pm: pluggy.PluginManager, registry: Registry | None = None) -> None:
        self.pm = pm
        self.registry = registry or get_registry()

    def has(self, name: str) -> bool:
        """Whether any plugin implements hook ``name``."""
        return bool(getattr(self.pm.hook, name).get_hookimpls())

    def call(self, name: str, **kwargs: Any) -> list[Any]:
        """Call hook ``name`` with ``kwargs``.

        Raises:
            PluginError: A plugin's implementation raised (or called ``sys.exit()``);
                the message names the plugin and its distribution.

        """
        hook = getattr(self.pm.hook, name)
        try:
            return list(hook(**kwargs))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            impl = _raising_impl(hook.get_hookimpls(), exc)
            if impl is None:  # raised by pluggy or pretrain itself: not a plugin's fault
                raise
            raise PluginError(
                f"hook {name} of plugin {impl.plugin_name}{self._origin(impl.plugin_name)} raised "
                f"{_describe(exc)}",
                hint="This is a bug in that plugin: report it to its authors, or uninstall it "
                "(or run with --no-plugins). Checkpoints written before it failed are intact; "
                "continue with --resume.",
            ) from exc

    def _origin(self, plugin_name: str) -> str:
        for record in self.registry.plugin_entry_points():
            if record.qualified_name == plugin_name:
                return f" (distribution {record.distribution} {record.version})"
        return ""


def _raising_impl(impls: list[Any], exc: BaseException) -> Any:
    """The hook implementation whose code raised ``exc`` (innermost matching frame)."""
    codes: dict[Any, list[Any]] = {}
    for impl in impls:
        codes.setdefault(getattr(impl.function, "__code__", None), []).append(impl)
    found = None
    tb = exc.__traceback__
    while tb is not None:
        candidates = codes.get(tb.tb_frame.f_code, [])
        if len(candidates) > 1:  # one method shared by several plugin objects: match the instance
            owner = tb.tb_frame.f_locals.get("self")
            candidates = [i for i in candidates if getattr(i.function, "__self__", None) is owner] or candidates
        if candidates:
            found = candidates[0]
        tb = tb.tb_next
    return found
