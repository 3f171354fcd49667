"""Conformance kit for component authors, in the spirit of scikit-learn's ``check_estimator``.

Check one component from a test or a notebook::

    from pretrain.testing import check_component

    check_component("MLPClsHead")          # raises ComponentCheckError on failure
    check_component(MyHead, kind="head")   # a class that is not registered (a notebook cell)

or get one pytest test per (component, check)::

    from pretrain.testing import parametrize_with_checks

    @parametrize_with_checks(["AcmeResNetCIFAR", "GeMPooling", "MLPClsHead"])
    def test_conformance(check):
        check()

Checks (see :func:`component_checks` for which apply to which kind): the schema
derives and the example config survives a JSON and a TOML round trip; every field
is documented; the example config builds, on the CPU and on the meta device (as
``pretrain validate``/``train``/``eval`` build it first); importing the module
registers nothing (registrations made in the process by other code are ignored); the
kind's call contract (backbones and necks return tuples,
heads return ``{"loss": scalar}`` and (N, C) scores, losses take ``weight`` /
``avg_factor`` / ``reduction_override``); eval mode is deterministic and keeps
samples independent; a safetensors state-dict round trip reproduces outputs;
gradients reach every trainable parameter; losses honour ``weight``,
``reduction``, ``avg_factor`` and ``loss_weight``.

How the kit builds and feeds a component (``example_config``, ``example_input``,
``example_inputs``) is described in ``docs/writing-plugins.md`` and in
:mod:`pretrain.testing._subject`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pretrain.testing._checks import CHECKS, checks_for_kind
from pretrain.testing._subject import ComponentCheckError, Subject, resolve_subject

__all__ = [
    "CHECKS",
    "ComponentCheck",
    "ComponentCheckError",
    "check_component",
    "component_checks",
    "parametrize_with_checks",
]

ComponentLike = str | type | tuple[str, str]


@dataclass
class ComponentCheck:
    """One check of one component; call it to run (raises :class:`ComponentCheckError`).

    Attributes:
        subject: The component under test.
        name: Check name (a key of :data:`CHECKS`).
        expected_failure: Why this check is expected to fail, or None.

    """

    subject: Subject
    name: str
    expected_failure: str | None = None

    @property
    def id(self) -> str:
        """Readable test id, e.g. ``backbone:ResNet-check_batch_independence``."""
        return f"{self.subject.label}-{self.name}"

    def __call__(self) -> None:
        """Run the check.

        Raises:
            ComponentCheckError: The component fails it; a failure to build the example
                is reported under this check's name too.

        """
        try:
            CHECKS[self.name](self.subject)
        except ComponentCheckError as exc:
            if exc.check == self.name:
                raise
            raise ComponentCheckError(
                self.subject.label, self.name, f"(in {exc.check}) {exc.problem}", exc.fix
            ) from exc

    def __repr__(self) -> str:
        return f"<ComponentCheck {self.id}>"


def component_checks(
    component: ComponentLike,
    *,
    kind: str | None = None,
    config: Mapping[str, Any] | None = None,
    expected_failed_checks: Mapping[str, str] | None = None,
) -> Iterator[ComponentCheck]:
    """Yield the checks that apply to ``component``, without running them.

    Args:
        component: A registered name (``"ResNet"``, ``"pretrain:ResNet"``), a
            ``(kind, name)`` tuple, or the class itself.
        kind: The component kind, when the name or class does not determine it.
        config: Example config (spec table without ``type``) to use instead of the
            class's ``example_config``.
        expected_failed_checks: ``{check name: reason}`` for checks known to fail.

    Raises:
        ComponentCheckError: The component cannot be resolved, or a name in
            ``expected_failed_checks`` is not a check that applies.

    """
    subject = resolve_subject(component, kind=kind, config=config)
    names = list(checks_for_kind(subject.kind))
    expected = dict(expected_failed_checks or {})
    unknown = sorted(set(expected) - set(names))
    if unknown:
        raise ComponentCheckError(
            subject.label, "expected_failed_checks",
            f"lists {', '.join(unknown)}, which do not apply to a {subject.kind}",
            f"Use names from: {', '.join(names)}.",
        )
    for name in names:
        yield ComponentCheck(subject, name, expected.get(name))


def check_component(
    component: ComponentLike,
    *,
    kind: str | None = None,
    config: Mapping[str, Any] | None = None,
    expected_failed_checks: Mapping[str, str] | None = None,
) -> list[str]:
    """Run every applicable check on ``component``.

    Args:
        component: Registered name (``"MLPClsHead"``, ``"pretrain-acme:MLPClsHead"``),
            ``(kind, name)`` or the class itself (registered or not).
        kind: The component kind, when not determined by ``component`` (a class that
            does not subclass a :mod:`pretrain.components` base class and is not
            registered, e.g. ``check_component(MyHead, kind="head")``).
        config: Example config to use instead of the class's ``example_config``.
        expected_failed_checks: ``{check name: reason}`` for checks known to fail; such
            a check that passes is an error (so that the list stays honest).

    Returns:
        The names of the checks that passed.

    Raises:
        ComponentCheckError: One or more checks failed; ``.failures`` lists them and
            the message says, for each, what to change.

    """
    passed: list[str] = []
    failures: list[ComponentCheckError] = []
    label = ""
    for check in component_checks(component, kind=kind, config=config, expected_failed_checks=expected_failed_checks):
        label = check.subject.label
        try:
            check()
        except ComponentCheckError as exc:
            if check.expected_failure is None:
                failures.append(exc)
            continue
        if check.expected_failure is not None:
            failures.append(ComponentCheckError(
                label, check.name, f"passed, but is listed as expected to fail ({check.expected_failure})",
                "Remove it from expected_failed_checks.",
            ))
        else:
            passed.append(check.name)
    if failures:
        seen: set[str] = set()
        lines = []
        for failure in failures:  # one broken example config fails every check alike
            key = failure.problem.partition(") ")[2] or failure.problem
            same = f"{failure.component} fails {failure.check}: (same cause)"
            lines.append(str(failure) if key not in seen else same)
            seen.add(key)
        text = "\n".join(lines)
        raise ComponentCheckError(label, ", ".join(f.check for f in failures),
                                  f"{len(failures)} check(s) failed:\n{text}", failures=failures)
    return passed


def parametrize_with_checks(
    components: Iterable[ComponentLike],
    *,
    expected_failed_checks: Mapping[str, Mapping[str, str]]
    | Callable[[Subject], Mapping[str, str] | None]
    | None = None,
) -> Any:
    """A ``pytest.mark.parametrize`` decorator with one test per (component, check).

    The test function takes one argument, ``check``, and calls it. Ids read
    ``backbone:ResNet-check_batch_independence``; expected failures become strict
    ``xfail`` marks (an unexpected pass fails the run).

    Args:
        components: Names, ``(kind, name)`` tuples or classes.
        expected_failed_checks: ``{component name: {check: reason}}`` (the name as
            registered, or ``kind:Name``), or a callable taking the resolved subject.

    """
    import pytest

    params = []
    for component in components:
        try:
            subject = resolve_subject(component)
        except ComponentCheckError as exc:
            # A component that does not even load is one failing test, not a collection error.
            params.append(pytest.param(_Raiser(exc), id=f"{exc.component}-resolve"))
            continue
        if callable(expected_failed_checks):
            expected = expected_failed_checks(subject) or {}
        else:
            table = expected_failed_checks or {}
            expected = table.get(subject.label) or table.get(subject.name) or {}
        for check in component_checks(component, kind=subject.kind, expected_failed_checks=expected):
            marks = []
            if check.expected_failure is not None:
                marks.append(pytest.mark.xfail(reason=check.expected_failure, strict=True,
                                               raises=ComponentCheckError))
            params.append(pytest.param(check, id=check.id, marks=marks))
    return pytest.mark.parametrize("check", params)


@dataclass
class _Raiser:
    """Stands in for the checks of a component that cannot be resolved."""

    error: ComponentCheckError

    def __call__(self) -> None:
        raise self.error
