"""Who raised it: attribute an exception to the component and the distribution whose code raised it.

Two facts are combined, both read from the exception's traceback (and its
``__cause__`` chain), innermost frame first:

* **the component**: the innermost frame that runs a method of an object the core
  built (``self`` is a component built by :mod:`pretrain.assembly.assemble`, which
  remembers every object it builds with its spec path and registry record);
* **the code's owner**: the innermost frame whose module belongs to pretrain (its core
  ``pretrain.*`` or its built-ins ``pretrain_builtins.*``) or to an installed plugin
  distribution (the registry knows the module of every entry point and which
  distribution declared it). Frames of torch, the standard library and other
  libraries belong to no one here: they are skipped, so a ``RuntimeError`` raised in
  ``torch.nn.functional`` is charged to the component that called it.

Torch-free at import: the CLI's error handler uses it for errors raised before torch
was ever imported.
"""

from __future__ import annotations

import os
import re
import sys
import types
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pretrain.errors import PluginError, PretrainError
from pretrain.registry.records import EntryRecord
from pretrain.registry.registry import BUILTIN_DISTRIBUTION, RUNTIME_DISTRIBUTION, get_registry, normalize_dist

__all__ = [
    "Culprit",
    "Origin",
    "blame",
    "origin_of",
    "plugin_error",
    "remember",
    "unexpected_error",
]

#: Packages whose code is pretrain's own (core and built-in components).
_OWN_PACKAGES = ("pretrain", "pretrain_builtins")


@dataclass(frozen=True)
class Origin:
    """Where a built object comes from: its spec path and registry record."""

    loc: str
    type_name: str
    record: EntryRecord


@dataclass(frozen=True)
class Culprit:
    """The result of :func:`blame`.

    Attributes:
        component: The innermost built component on the stack (None if none was).
        distribution: Distribution whose code raised (``pretrain`` for pretrain itself).
        version: Its version.
        module: Module of the innermost frame that belongs to a known distribution.
        builtin: The code that raised is pretrain's own (core or built-in components).

    """

    component: Origin | None
    distribution: str
    version: str
    module: str
    builtin: bool

    def describe(self, *, with_loc: bool = True) -> str:
        """``component NonLinearNeck at model.head.predictor (from distribution X, version Y)``.

        Args:
            with_loc: Say the component's spec path (leave it out when the caller prints it).

        """
        origin = _from(self.distribution, self.version)
        comp = self.component
        if comp is None:
            return f"code in {self.module}{origin}"
        at = f" at {comp.loc}" if with_loc else ""
        if normalize_dist(comp.record.distribution) == normalize_dist(self.distribution):
            return f"component {comp.type_name}{at}{origin}"
        return (f"code in {self.module}{origin}, running component {comp.type_name}{at}"
                f"{_from(comp.record.distribution, comp.record.version)}")


def _from(distribution: str, version: str) -> str:
    if distribution == RUNTIME_DISTRIBUTION:
        return " (registered in this process with register())"
    return f" (from distribution {distribution}, version {version})"


# ------------------------------------------------------------------------------ built objects

_ORIGINS: weakref.WeakKeyDictionary[Any, Origin] = weakref.WeakKeyDictionary()


def remember(obj: Any, loc: str, type_name: str, record: EntryRecord) -> None:
    """Note that ``obj`` was built for the spec table at ``loc`` (weakly: it may be freed)."""
    origin = Origin(loc, type_name, record)
    try:
        _ORIGINS[obj] = origin
    except TypeError:  # unhashable or not weak-referenceable (a plain dataset class, say)
        return


def origin_of(obj: Any) -> Origin | None:
    """The spec path and record ``obj`` was built from, if the core built it."""
    try:
        return _ORIGINS.get(obj)
    except TypeError:
        return None


# ------------------------------------------------------------------------------ module owners


@dataclass(frozen=True)
class _Owner:
    distribution: str
    version: str
    builtin: bool


def _module_owners() -> dict[str, _Owner]:
    """Module (and package) name -> owning distribution, from the registry's records."""
    from pretrain import __version__

    owners: dict[str, _Owner] = {pkg: _Owner(BUILTIN_DISTRIBUTION, __version__, True) for pkg in _OWN_PACKAGES}
    registry = get_registry()
    claims: dict[str, set[tuple[str, str]]] = {}
    records = [*registry.entries(), *registry.plugin_entry_points()]
    for record in records:
        module = record.module
        if not module or module in ("?", "<runtime>"):
            continue
        parts = module.split(".")
        # The module itself, and (for installed distributions) its parent packages: a
        # plugin's helper modules live next to its components.
        prefixes = [module] if record.source == "runtime" else [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        for prefix in prefixes:
            claims.setdefault(prefix, set()).add((record.distribution, record.version))
    for prefix, dists in claims.items():
        if prefix.split(".")[0] in _OWN_PACKAGES:
            continue
        if len({normalize_dist(d) for d, _ in dists}) == 1:  # a namespace package shared by two: nobody's
            dist, version = sorted(dists)[0]
            owners[prefix] = _Owner(dist, version, normalize_dist(dist) == BUILTIN_DISTRIBUTION)
    return owners


def _owner(module: str, owners: dict[str, _Owner]) -> _Owner | None:
    """The owner of ``module``: the longest known prefix."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        found = owners.get(".".join(parts[:i]))
        if found is not None:
            return found
    return None


def _module_name(frame: types.FrameType) -> str:
    spec = frame.f_globals.get("__spec__")
    name = getattr(spec, "name", None)  # `python -m pretrain` runs pretrain.__main__ as "__main__"
    return str(name or frame.f_globals.get("__name__") or "?")


# ------------------------------------------------------------------------------ tracebacks


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its explicit causes, outermost first (a cause raised deeper in the stack)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__
    return chain


def frames(exc: BaseException) -> Iterator[types.FrameType]:
    """Every frame of ``exc``'s traceback and its causes', innermost first."""
    ordered: list[types.FrameType] = []
    for link in _chain(exc):
        tb = link.__traceback__
        while tb is not None:
            ordered.append(tb.tb_frame)
            tb = tb.tb_next
    seen: set[int] = set()
    for frame in reversed(ordered):
        if id(frame) not in seen:
            seen.add(id(frame))
            yield frame


_FILE_LINE = re.compile(r'^\s*File "(?P<path>[^"]+)", line \d+', re.MULTILINE)


def _text_traceback_modules(exc: BaseException) -> list[str]:
    """Modules of the frames in a traceback quoted in ``exc``'s message, innermost first.

    torch's DataLoader re-raises a worker's exception in the main process with the
    worker's traceback as text ("Original Traceback (most recent call last): ...").
    """
    text = str(exc)
    if "Traceback (most recent call last)" not in text:
        return []
    by_file: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            by_file[os.path.realpath(path)] = name
    found = [by_file.get(os.path.realpath(m["path"])) for m in _FILE_LINE.finditer(text)]
    return [name for name in reversed(found) if name]


def blame(exc: BaseException) -> Culprit | None:
    """The component and the distribution whose code raised ``exc`` (see the module docs).

    Returns:
        None when no frame belongs to pretrain or to an installed plugin.

    """
    owners = _module_owners()
    component: Origin | None = None
    found: tuple[_Owner, str] | None = None
    for module in _text_traceback_modules(exc):
        # A DataLoader worker's exception comes back with its frames as text only.
        owner = _owner(module, owners)
        if owner is not None:
            found = (owner, module)
            break
    for frame in frames(exc):
        if component is None:
            origin = origin_of(frame.f_locals.get("self"))
            if origin is not None:
                component = origin
        if found is None:
            module = _module_name(frame)
            owner = _owner(module, owners)
            if owner is not None:
                found = (owner, module)
        if component is not None and found is not None:
            break
    if found is None:
        return None
    owner, module = found
    return Culprit(component, owner.distribution, owner.version, module, owner.builtin)


def _summary(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, PretrainError) else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def plugin_error(exc: BaseException, *, during: str = "") -> PluginError | None:
    """A :class:`~pretrain.errors.PluginError` naming the plugin whose code raised ``exc``.

    Args:
        exc: An exception raised while a model ran (training, evaluation).
        during: What was running, for the message (``"while training"``).

    Returns:
        None when the code that raised is pretrain's own, or unknown.

    """
    culprit = blame(exc)
    if culprit is None or culprit.builtin:
        return None
    where = f"{culprit.component.loc}: " if culprit.component is not None else ""
    return PluginError(
        f"{where}{culprit.describe(with_loc=False)} raised {_summary(exc)}{(' ' + during) if during else ''}",
        hint=f"This comes from {culprit.distribution}, not from pretrain: check the values the spec gives it"
        f"{f' ({culprit.component.loc})' if culprit.component else ''}, report it to its authors, or run "
        "with --debug for the traceback. Checkpoints written before it failed are intact.",
    )


def unexpected_error(exc: BaseException, context: str) -> PretrainError:
    """How the CLI reports an exception that is not a :class:`PretrainError`.

    A third-party plugin's fault becomes a :class:`PluginError` naming it; "please report
    it" is said only when the innermost frame with an owner is pretrain's own code.

    Args:
        exc: The exception.
        context: What was running (``"`pretrain train`"``).

    """
    if type(exc).__name__ in ("OutOfMemoryError", "MemoryError"):
        return PretrainError(f"out of memory in {context}: {exc}",
                             hint="Lower data.batch_size (or the image size), or use a smaller model.")
    try:
        culprit = blame(exc)
    except Exception:  # the report must never hide the original error
        culprit = None
    if culprit is not None and not culprit.builtin:
        error = plugin_error(exc, during=f"in {context}")
        if error is not None:
            return error
    if culprit is not None and culprit.builtin:
        where = f" ({culprit.component.loc}, {culprit.component.type_name})" if culprit.component else ""
        return PretrainError(
            f"unexpected {type(exc).__name__} in {context}{where}: {exc}",
            hint="This is a bug in pretrain: run again with --debug for the traceback, and please report it.",
        )
    return PretrainError(f"unexpected {type(exc).__name__} in {context}: {exc}",
                         hint="Run again with --debug for the traceback.")
