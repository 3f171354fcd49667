"""Component registry: entry-point discovery, lookup and in-process registration.

Three tiers of laziness (see ``docs/architecture.md``):

1. listing reads entry-point metadata only: no plugin module, no torch, no pydantic;
2. looking a component up imports its module the first time it is needed;
3. building it (``pretrain.assembly.assemble``) calls the class.

Every ``load`` is isolated: a plugin that fails to import, points at a missing
attribute or is not a valid component becomes a recorded :class:`LoadFailure`
naming the distribution, its version, the entry point and the error. Set
``PRETRAIN_STRICT_PLUGINS=1`` to turn those into exceptions (for plugin authors).
``PRETRAIN_DISABLE_PLUGIN_AUTOLOAD=1`` ignores every third-party distribution;
``PRETRAIN_PLUGINS=dist-a,dist-b`` loads only those (built-ins are always on).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from pretrain.errors import ComponentLookupError, PluginLoadError, close_matches
from pretrain.registry.kinds import KINDS, PLUGIN_GROUP, kind_of_group
from pretrain.registry.records import EntryRecord, LoadFailure

__all__ = [
    "BUILTIN_DISTRIBUTION",
    "EntryRecord",
    "LoadFailure",
    "Registry",
    "get_registry",
    "normalize_dist",
]

BUILTIN_DISTRIBUTION: Final = "pretrain"
RUNTIME_DISTRIBUTION: Final = "__runtime__"

ENV_STRICT: Final = "PRETRAIN_STRICT_PLUGINS"
ENV_NO_AUTOLOAD: Final = "PRETRAIN_DISABLE_PLUGIN_AUTOLOAD"
ENV_ALLOW: Final = "PRETRAIN_PLUGINS"


def normalize_dist(name: str) -> str:
    """PEP 503 normalisation, so ``Acme_Models`` and ``acme-models`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


@dataclass
class _Runtime:
    record: EntryRecord
    obj: Any


@dataclass
class Registry:
    """All components the process can see.

    Args:
        autoload: Read third-party entry points. ``None`` follows the environment
            (``PRETRAIN_DISABLE_PLUGIN_AUTOLOAD``).
        strict: Raise on the first broken component instead of recording it.
            ``None`` follows ``PRETRAIN_STRICT_PLUGINS``.
        validator: Called as ``validator(record, obj)`` after import; raises
            ``TypeError`` when ``obj`` breaks its kind's contract. Defaults to the
            core's contract check (class of the right kind with a derivable schema).

    """

    autoload: bool | None = None
    strict: bool | None = None
    validator: Callable[[EntryRecord, Any], None] | None = field(default_factory=lambda: _check_contract)
    _scanned: list[EntryRecord] | None = field(default=None, repr=False)
    _plugin_eps: list[EntryRecord] | None = field(default=None, repr=False)
    _runtime: dict[tuple[str, str, str], _Runtime] = field(default_factory=dict, repr=False)
    _loaded: dict[EntryRecord, Any] = field(default_factory=dict, repr=False)
    _failures: dict[EntryRecord, LoadFailure] = field(default_factory=dict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # -- configuration -------------------------------------------------------------
    @property
    def is_strict(self) -> bool:
        """Whether load failures raise."""
        return _env_flag(ENV_STRICT) if self.strict is None else self.strict

    @property
    def autoloads(self) -> bool:
        """Whether third-party entry points are read."""
        return (not _env_flag(ENV_NO_AUTOLOAD)) if self.autoload is None else self.autoload

    def _allowed(self, distribution: str) -> bool:
        if normalize_dist(distribution) == BUILTIN_DISTRIBUTION:
            return True
        if not self.autoloads:
            return False
        allow = os.environ.get(ENV_ALLOW)
        if allow is None:
            return True
        return normalize_dist(distribution) in {normalize_dist(a) for a in allow.split(",") if a}

    # -- discovery (metadata only) -------------------------------------------------
    def _scan(self) -> None:
        groups = set(KINDS.values())
        components: list[EntryRecord] = []
        plugins: list[EntryRecord] = []
        seen: set[tuple[str, str, str]] = set()
        seen_dists: set[str] = set()
        for dist in md.distributions():
            # Cheap pre-filter: most distributions have no entry point of ours, so
            # read entry_points.txt as text before parsing or touching METADATA.
            try:
                text = dist.read_text("entry_points.txt") or ""
            except Exception:
                continue
            if "[pretrain." not in text:
                continue
            try:
                dist_name = dist.metadata["Name"] or ""
            except Exception:
                continue
            norm = normalize_dist(dist_name)
            # The same distribution reachable through two sys.path entries (lib64 ->
            # lib symlinks, stale copies) is counted once: first on sys.path wins.
            if not dist_name or norm in seen_dists or not self._allowed(dist_name):
                continue
            seen_dists.add(norm)
            relevant = [
                ep for ep in dist.entry_points if ep.group in groups or ep.group == PLUGIN_GROUP
            ]
            if not relevant:
                continue
            version = dist.version or "?"
            for ep in relevant:
                key = (norm, ep.group, ep.name)
                if key in seen:
                    continue
                seen.add(key)
                if ep.group == PLUGIN_GROUP:
                    plugins.append(EntryRecord("plugin", ep.name, ep.value, dist_name, version))
                    continue
                kind = kind_of_group(ep.group)
                assert kind is not None
                components.append(EntryRecord(kind, ep.name, ep.value, dist_name, version))
        components.sort(key=lambda r: (list(KINDS).index(r.kind), r.name.lower(), r.distribution))
        self._scanned = components
        self._plugin_eps = plugins

    def refresh(self) -> None:
        """Forget the metadata scan and loaded objects (after a ``pip install``)."""
        with self._lock:
            self._scanned = None
            self._plugin_eps = None
            self._loaded.clear()
            self._failures.clear()
            importlib.invalidate_caches()

    def plugin_entry_points(self) -> list[EntryRecord]:
        """Entry points of the ``pretrain.plugins`` (pluggy hooks) group."""
        with self._lock:
            if self._plugin_eps is None:
                self._scan()
            assert self._plugin_eps is not None
            return list(self._plugin_eps)

    def entries(self, kind: str | None = None) -> list[EntryRecord]:
        """Every known component (entry points + in-process), optionally of one kind."""
        with self._lock:
            if self._scanned is None:
                self._scan()
            assert self._scanned is not None
            records = list(self._scanned) + [rt.record for rt in self._runtime.values()]
        if kind is not None:
            records = [r for r in records if r.kind == kind]
        return records

    def names(self, kind: str) -> list[str]:
        """Sorted unique bare names of ``kind``."""
        return sorted({r.name for r in self.entries(kind)})

    # -- in-process registration ---------------------------------------------------
    def register(
        self,
        kind: str,
        name: str,
        obj: Any,
        *,
        distribution: str = RUNTIME_DISTRIBUTION,
        version: str = "0",
        source: str = "runtime",
    ) -> EntryRecord:
        """Register ``obj`` as component ``name`` of ``kind`` in this process.

        For notebooks, tests and pluggy ``pretrain_register_components`` hooks. The
        object is validated at once, so a bad registration fails here, not later.

        Raises:
            ValueError: ``kind`` is unknown, or this distribution already registered
                ``name`` for ``kind`` in this process.

        """
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; known kinds: {', '.join(KINDS)}")
        if not name or ":" in name:
            raise ValueError(f"invalid component name {name!r} (non-empty, no ':')")
        value = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"
        record = EntryRecord(kind, name, value, distribution, version, source)
        key = (kind, normalize_dist(distribution), name)
        with self._lock:
            if key in self._runtime and self._runtime[key].obj is not obj:
                raise ValueError(
                    f"{kind} {name!r} is already registered by {distribution}; "
                    "unregister it first"
                )
            if self.validator is not None:
                self.validator(record, obj)
            self._runtime[key] = _Runtime(record, obj)
            self._loaded[record] = obj
        return record

    def unregister(self, kind: str, name: str, *, distribution: str | None = None) -> None:
        """Remove in-process registrations of ``name`` (all distributions unless given)."""
        with self._lock:
            for key in list(self._runtime):
                k, dist, n = key
                if k == kind and n == name and (
                    distribution is None or dist == normalize_dist(distribution)
                ):
                    self._loaded.pop(self._runtime[key].record, None)
                    del self._runtime[key]

    # -- lookup -----------------------------------------------------------------------
    def resolve(self, kind: str, type_name: str) -> EntryRecord:
        """Find the record that the spec value ``type_name`` names.

        ``Name`` must be unique across distributions; ``distribution:Name`` always
        selects one. A ``type`` is never treated as an import path.

        Raises:
            ComponentLookupError: Unknown or ambiguous, with did-you-mean and a note
                about broken plugins that might have provided it.

        """
        dist, sep, bare = type_name.rpartition(":")
        candidates = [r for r in self.entries(kind) if r.name == bare]
        if sep:
            candidates = [r for r in candidates if normalize_dist(r.distribution) == normalize_dist(dist)]
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            listed = ", ".join(sorted(r.qualified_name for r in candidates))
            raise ComponentLookupError(
                f"{kind} type {type_name!r} is provided by {len(candidates)} distributions: {listed}",
                hint=f"Write the qualified form, e.g. type = \"{candidates[0].qualified_name}\".",
            )
        raise ComponentLookupError(self.unknown_message(kind, type_name))

    def unknown_message(self, kind: str, type_name: str) -> str:
        """Message for an unknown ``type``: did-you-mean, other kinds, broken plugins."""
        bare = type_name.rpartition(":")[2]
        names = self.names(kind)
        parts = [f"unknown {kind} type {type_name!r}"]
        close = close_matches(bare, names, n=3)
        if close:
            parts.append("did you mean " + " or ".join(repr(c) for c in close) + "?")
        other_kinds = sorted({r.kind for r in self.entries() if r.name == bare and r.kind != kind})
        if other_kinds:
            parts.append(f"{bare!r} exists as a {', '.join(other_kinds)}, not a {kind}")
        broken = [f for f in self.failures() if f.record.kind == kind]
        if broken:
            parts.append(
                "note: these broken plugins may have provided it: "
                + "; ".join(f.describe() for f in broken)
            )
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        parts.append(f"installed {kind}s: {shown or 'none'}")
        return "; ".join(parts)

    def load(self, record: EntryRecord) -> Any:
        """Import (once) and return the object behind ``record``.

        Raises:
            PluginLoadError: The import failed, the attribute is missing, or the
                object breaks its kind's contract. Recorded in :meth:`failures`.

        """
        with self._lock:
            if record in self._loaded:
                return self._loaded[record]
            if record in self._failures:
                failure = self._failures[record]
                raise PluginLoadError(failure.describe(), hint=_fix_hint(record))
            try:
                obj = _import_value(record.value)
                if self.validator is not None:
                    self.validator(record, obj)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit too: a plugin must not end the process
                error = (f"SystemExit({exc.code!r}): the module called sys.exit() at import"
                         if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}")
                failure = LoadFailure(record, error)
                self._failures[record] = failure
                err = PluginLoadError(failure.describe(), hint=_fix_hint(record))
                if self.is_strict:
                    raise err from exc
                raise err from None
            self._loaded[record] = obj
            return obj

    def get(self, kind: str, type_name: str) -> Any:
        """Resolve and load in one step."""
        return self.load(self.resolve(kind, type_name))

    def check_all(self, kind: str | None = None) -> Iterator[tuple[EntryRecord, Any, str | None]]:
        """Load every component; yield ``(record, obj_or_None, error_or_None)``."""
        for record in self.entries(kind):
            try:
                yield record, self.load(record), None
            except PluginLoadError:
                failure = self._failures.get(record)
                yield record, None, failure.error if failure else "failed to load"

    def failures(self) -> list[LoadFailure]:
        """Components that failed to load so far in this process."""
        with self._lock:
            return list(self._failures.values())

    def record_failure(self, record: EntryRecord, error: str) -> None:
        """Record a failure found outside :meth:`load` (e.g. a pluggy plugin)."""
        with self._lock:
            self._failures[record] = LoadFailure(record, error)

    def distributions(self) -> list[tuple[str, str]]:
        """``(distribution, version)`` of everything that provides components or hooks."""
        found = {(r.distribution, r.version) for r in self.entries()}
        found |= {(r.distribution, r.version) for r in self.plugin_entry_points()}
        return sorted(found, key=lambda d: (normalize_dist(d[0]) != BUILTIN_DISTRIBUTION, d[0]))


def _check_contract(record: EntryRecord, obj: Any) -> None:
    # Imported on first load, not at listing time: the check needs pydantic.
    from pretrain.registry.schema import check_component_contract

    check_component_contract(record, obj)


def _import_value(value: str, *, allow_module: bool = False) -> Any:
    module_name, _, attr = value.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not module_name or (not attr and not allow_module):
        raise ValueError(f"entry point value {value!r} is not of the form 'module:attr'")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split(".") if attr else []:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _fix_hint(record: EntryRecord) -> str:
    if record.source != "entry-point":
        return "Fix the object passed to register() or unregister it."
    return (
        f"Fix or reinstall {record.distribution} (pip install --force-reinstall "
        f"{record.distribution}), or uninstall it; set {ENV_STRICT}=1 for the full traceback."
    )


def top_level_present(record: EntryRecord) -> str | None:
    """Check cheaply (metadata tier) that the entry point's top-level package exists.

    Looks the package up without executing it (``find_spec`` on a top-level name
    runs no code). Returns an error message, or ``None`` when present.
    """
    if record.source != "entry-point":
        return None
    top = record.module.split(".")[0]
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if found else f"ModuleNotFoundError: no module named {top!r}"


_REGISTRY: Registry | None = None
_REGISTRY_LOCK = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry (created on first use)."""
    global _REGISTRY  # noqa: PLW0603 - one lazily created process-wide registry
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            _REGISTRY = Registry()
        return _REGISTRY


def set_registry(registry: Registry | None) -> Registry | None:
    """Replace the process-wide registry (tests); returns the previous one."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        previous, _REGISTRY = _REGISTRY, registry
        return previous


def iter_kinds() -> Iterable[str]:
    """Kinds in display order."""
    return KINDS.keys()
