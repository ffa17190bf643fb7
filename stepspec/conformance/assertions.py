"""Assertions with one message convention (spec/conformance.md#messages):

    [<algo> <property> · spec/<page>#<algo>] <what>[<index>]=<actual>, reference=<expected>,
    deviation=<dev> > tol=<tol> at t=<t>; hyperparameters: {...}

Every comparison also reports its deviation to the ``Record`` of the running test, which feeds the
report's "largest deviation seen" column.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from hypothesis import assume

from .. import spec
from .tolerance import deviation, series_scale


class ConformanceFailure(AssertionError):
    """A property does not hold for the backend under test."""


@dataclass
class Record:
    """What one test saw: the examples run to the end and the largest deviation, as an absolute value and
    as a fraction of its tolerance.

    Hypothesis examples are delimited by ``start_example`` / ``end_example`` (the plugin wraps every
    property): examples are counted up to and including the first failing one, the search's own; the
    shrinking that follows re-runs smaller failing examples, which are not counted, and only the last of
    them, the example hypothesis reports, adds its deviation. A test that is not a hypothesis property is
    one example."""

    examples: int = 0
    max_deviation: float = 0.0
    max_ratio: float = 0.0
    failed: bool = False
    delimited: bool = False
    _example: tuple = (0.0, 0.0)
    _reported: tuple = (0.0, 0.0)

    def observe(self, dev: float, tol: float) -> None:
        ratio = dev / tol if tol > 0 else (0.0 if dev == 0 else math.inf)
        self._example = (max(self._example[0], dev), max(self._example[1], ratio))

    def start_example(self) -> None:
        self.delimited, self._example = True, (0.0, 0.0)

    def end_example(self, failed: bool) -> None:
        if self.failed:  # shrinking: keep the latest failing example, the one reported
            if failed:
                self._reported = self._example
            return
        self.examples += 1
        self.failed = failed
        if failed:
            self._reported = self._example
        self.max_deviation = max(self.max_deviation, self._example[0])
        self.max_ratio = max(self.max_ratio, self._example[1])

    def summary(self) -> tuple[int, float, float]:
        """(examples, largest deviation, largest deviation over tolerance), the reported example included."""
        if not self.delimited:
            return 1, *self._example
        return self.examples, max(self.max_deviation, self._reported[0]), max(self.max_ratio, self._reported[1])


CURRENT_TEST: contextvars.ContextVar = contextvars.ContextVar("stepspec_current_test", default=None)
"""(algorithm, property) of the conformance test running now; set by the plugin, read by messages that
are not written by a property (an unexpected exception from the backend, harness.Guarded)."""


def show_value(value) -> str:
    """A hyperparameter as it can be typed back: floats by repr (round-trip exact), small arrays in full
    as nested lists, larger ones by shape, dataclasses (a memory-rule spec) field by field."""
    if isinstance(value, np.ndarray):
        return repr(value.tolist()) if value.size <= 64 else f"<array of shape {value.shape}>"
    if isinstance(value, (np.floating, np.integer)):
        return repr(value.item())
    if isinstance(value, (tuple, list)):
        inner = ", ".join(show_value(v) for v in value)
        return f"({inner}{',' if len(value) == 1 else ''})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {show_value(v)}" for k, v in value.items()) + "}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ", ".join(f"{f.name}={show_value(getattr(value, f.name))}" for f in dataclasses.fields(value))
        return f"{type(value).__name__}({fields})"
    return repr(value)


@dataclass(frozen=True)
class Context:
    """Who is being checked, for messages."""

    algo: str
    prop: str
    hyperparameters: dict = field(default_factory=dict)

    def prefix(self) -> str:
        try:
            anchor = spec.section(self.algo).anchor
        except KeyError:
            anchor = "spec/"
        return f"[{self.algo} {self.prop} · {anchor}]"

    def suffix(self) -> str:
        return f"; hyperparameters: {show_value(dict(self.hyperparameters))}" if self.hyperparameters else ""


def _show(x) -> str:
    return np.format_float_scientific(x, precision=16) if isinstance(x, float) else repr(x)


def assert_series_close(
    actual, expected, *, tol, what: str, ctx: Context, record: Record, first_t: int = 0, scale=None
):
    """Compare two series (lists of arrays, entry i at t = first_t + i) against one scale: the
    series' own magnitude, or ``scale`` where the expected value is zero by construction (a residual).
    ``tol`` is one tolerance, or one per entry (a stepwise comparison, whose steps differ in conditioning).
    An entry whose tolerance reaches 1 has no digit determined at the backend's precision and is not
    compared; when no entry is left, the example is rejected (spec/tolerances.md#unresolvable)."""
    if len(actual) != len(expected):
        raise ConformanceFailure(
            f"{ctx.prefix()} {what}: {len(actual)} steps, reference has {len(expected)}{ctx.suffix()}"
        )
    tols = list(tol) if np.iterable(tol) else [tol] * len(expected)
    if tols and all(entry_tol >= 1.0 for entry_tol in tols):
        assume(False)
    scale = series_scale(list(expected)) if scale is None else scale
    worst, where = -1.0, None
    for i, (a, e, entry_tol) in enumerate(zip(actual, expected, tols)):
        if entry_tol >= 1.0:
            continue
        dev, index = deviation(a, e, scale)
        record.observe(dev, entry_tol)
        ratio = dev / entry_tol if entry_tol > 0 else (0.0 if dev == 0 else np.inf)
        if ratio > worst:
            worst, where = ratio, (first_t + i, index, a, e, dev, entry_tol)
    if where is not None and not worst <= 1.0:
        t, index, a, e, dev, entry_tol = where
        a, e = np.atleast_1d(np.asarray(a, dtype=np.float64)), np.atleast_1d(np.asarray(e, dtype=np.float64))
        if a.shape != e.shape:
            detail = f"{what} has shape {a.shape}, reference {e.shape}"
        else:
            detail = f"{what}{list(index)}={_show(float(a[index]))}, reference={_show(float(e[index]))}"
        raise ConformanceFailure(
            f"{ctx.prefix()} {detail}, deviation={dev:.3g} (relative to scale {scale:.3g}) > tol={entry_tol:.3g} "
            f"at t={t}{ctx.suffix()}"
        )


def assert_close(
    actual, expected, *, tol: float, what: str, ctx: Context, record: Record, t: int | None = None, scale=None
):
    assert_series_close([actual], [expected], tol=tol, what=what, ctx=ctx, record=record, first_t=t or 0, scale=scale)


def assert_holds(condition: bool, statement: str, ctx: Context):
    """A qualitative property (an inequality, a sign, a raised error)."""
    if not condition:
        raise ConformanceFailure(f"{ctx.prefix()} {statement}{ctx.suffix()}")
