"""Assertions with one message convention (spec/conformance.md#messages):

    [<algo> <property> · spec/<page>#<algo>] <what>[<index>]=<actual>, reference=<expected>,
    deviation=<dev> > tol=<tol> at t=<t>; hyperparameters: {...}

Every comparison also reports its deviation to the ``Record`` of the running test, which feeds the
report's "largest deviation seen" column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import spec
from .tolerance import deviation, series_scale


class ConformanceFailure(AssertionError):
    """A property does not hold for the backend under test."""


@dataclass
class Record:
    """What one test saw: examples run (counted by the plugin) and the largest deviation, as an
    absolute value and as a fraction of its tolerance."""

    examples: int = 0
    max_deviation: float = 0.0
    max_ratio: float = 0.0

    def observe(self, dev: float, tol: float) -> None:
        self.max_deviation = max(self.max_deviation, dev)
        self.max_ratio = max(self.max_ratio, dev / tol if tol > 0 else (0.0 if dev == 0 else np.inf))


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
        shown = {
            k: (np.asarray(v).round(6).tolist() if isinstance(v, np.ndarray) else v)
            for k, v in self.hyperparameters.items()
        }
        return f"; hyperparameters: {shown}" if shown else ""


def _show(x) -> str:
    return np.format_float_scientific(x, precision=16) if isinstance(x, float) else repr(x)


def assert_series_close(
    actual, expected, *, tol: float, what: str, ctx: Context, record: Record, first_t: int = 0, scale=None
):
    """Compare two series (lists of arrays, entry i at t = first_t + i) against one scale: the
    series' own magnitude, or ``scale`` where the expected value is zero by construction (a residual)."""
    if len(actual) != len(expected):
        raise ConformanceFailure(
            f"{ctx.prefix()} {what}: {len(actual)} steps, reference has {len(expected)}{ctx.suffix()}"
        )
    scale = series_scale(list(expected)) if scale is None else scale
    worst, where = 0.0, None
    for i, (a, e) in enumerate(zip(actual, expected)):
        dev, index = deviation(a, e, scale)
        if dev > worst or where is None:
            worst, where = dev, (first_t + i, index, a, e)
    record.observe(worst, tol)
    if not worst <= tol:
        t, index, a, e = where
        a, e = np.atleast_1d(np.asarray(a, dtype=np.float64)), np.atleast_1d(np.asarray(e, dtype=np.float64))
        if a.shape != e.shape:
            detail = f"{what} has shape {a.shape}, reference {e.shape}"
        else:
            detail = f"{what}{list(index)}={_show(float(a[index]))}, reference={_show(float(e[index]))}"
        raise ConformanceFailure(
            f"{ctx.prefix()} {detail}, deviation={worst:.3g} (relative to scale {scale:.3g}) > tol={tol:.3g} "
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
