"""Every hypothesis strategy of the suite lives here (spec/conformance.md#generation).

Random arrays come from NumPy generators seeded by a drawn integer: examples stay small to print
and replay (``seed=…``), and shrinking acts on dimensions, step counts and hyperparameters.
Problems are scaled so that their smoothness L is about 1, which makes the sampling boxes of the
learning rates in catalog.py stable for every problem.
"""

from __future__ import annotations

import contextvars
import math

import numpy as np
from hypothesis import reject
from hypothesis import strategies as st

from .. import problems as P
from .. import spec
from ..backends.reference import BACKEND as REFERENCE
from ..errors import HyperparameterError
from ..reference import propagators as props

PRECISION = contextvars.ContextVar("stepspec_precision", default="float64")
"""The dtype of the backend under test (the plugin sets it for each test): hyperparameters are drawn so
that the backend can represent them and the products they scale stay normal numbers."""


def smallest_magnitude(dtype: str) -> float:
    """√(smallest normal number) of ``dtype``: a non-zero hyperparameter is at least this large, so that a
    product of two such values with O(1) quantities is still a normal number (1.5e-154 in float64,
    1.1e-19 in float32). Below it the arithmetic underflows and is not the formulas' (spec/tolerances.md)."""
    return math.sqrt(float(np.finfo(np.dtype(dtype)).tiny))


MAX_DIMENSION = 6
MAX_STEPS = 25  # crosses M_0 = 0 (RLLC's first law step is a no-op) and Adam's bias-correction transient


def seeds():
    return st.integers(0, 2**32 - 1)


def dimensions(low: int = 1, high: int = MAX_DIMENSION):
    return st.integers(low, high)


def horizons(low: int = 1, high: int = MAX_STEPS):
    return st.integers(low, high)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@st.composite
def vectors(draw, n: int, scale: float = 1.0):
    return scale * rng(draw(seeds())).standard_normal(n)


@st.composite
def gradient_sequences(draw, n: int, steps: int):
    """An open-loop stream g_1 … g_T (for properties of F alone)."""
    return list(rng(draw(seeds())).standard_normal((steps, n)))


@st.composite
def parameter_shapes(draw, n: int):
    """Shapes of a parameter structure over n entries: one to four tensors of any rank — a 0-d scalar,
    matrices, a (1, s) row — with empty tensors ((0,), (2, 0)) mixed in."""
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3), label="cuts"))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, n])]
    shapes = []
    for size in sizes:
        # matrices first: hypothesis favours the first choice, and a row-major versus column-major slip shows
        # only on a matrix with both sides above 1
        options = [(size // d, d) for d in (2, 3) if size % d == 0 and size // d > 1]
        options += [(size,), (1, size), (size, 1)]
        options += [()] if size == 1 else []
        options += [(0,), (2, 0)] if size == 0 else []
        shapes.append(draw(st.sampled_from(options), label="shape"))
    if draw(st.booleans(), label="an empty tensor too"):
        shapes.insert(draw(st.integers(0, len(shapes)), label="where"), (0,))
    return shapes


# --------------------------------------------------------------------------- problems


def _normalised_logistic(m, n, seed, l2):
    base = P.random_logistic(m, n, l2=l2, seed=seed)
    data_part = base.smoothness - l2  # λ_max(XᵀX)/(4m)
    return P.Logistic(base.X * math.sqrt((1 - l2) / data_part), base.y, l2)  # smoothness L = 1


@st.composite
def problems(draw, n: int | None = None, kinds=("quadratic", "least_squares", "logistic", "minibatch_logistic")):
    """A smooth problem with L ≈ 1 in dimension n (drawn when None)."""
    n = draw(dimensions()) if n is None else n
    kind = draw(st.sampled_from(kinds))
    seed = draw(seeds())
    if kind == "quadratic":
        return P.random_quadratic(n, condition=draw(st.floats(1.0, 100.0)), seed=seed)
    if kind == "least_squares":
        base = P.random_least_squares(3 * n + 2, n, seed=seed)
        return P.LeastSquares(base.X / math.sqrt(base.smoothness), base.y)
    full = _normalised_logistic(4 * n + 4, n, seed, l2=draw(st.floats(1e-3, 1e-1)))
    if kind == "logistic":
        return full
    return P.MiniBatch(full, batch_size=draw(st.integers(1, full.m)), seed=seed)


# --------------------------------------------------------------------------- hyperparameters


def floats(low: float, high: float, *, exclude_min: bool = False, exclude_max: bool = False, zero: bool = True):
    """Finite floats in [low, high] for a hyperparameter or a rate, as ``st.floats`` draws them, except that a
    non-zero magnitude below ``smallest_magnitude`` of the backend's precision becomes 0 (where ``zero``
    and the range allow it) or that smallest magnitude. Every drawn rate of the suite comes from here."""
    zero_allowed = zero and low <= 0.0 <= high and not (low == 0.0 and exclude_min)

    def normal(x: float) -> float:
        floor = smallest_magnitude(PRECISION.get())  # at draw time: a @given strategy is built at import
        if x == 0.0 or abs(x) >= floor:
            return x
        return 0.0 if zero_allowed else math.copysign(floor, x)

    return st.floats(
        low,
        high,
        exclude_min=exclude_min,
        exclude_max=exclude_max,
        allow_nan=False,
        allow_infinity=False,
        allow_subnormal=False,  # a valid but degenerate corner whose arithmetic is not the formulas'
    ).map(normal)


def _interval_values(domain: spec.Interval, box: tuple[float, float]):
    """A value of ``domain`` ∩ ``box``."""
    low, high = max(domain.low, box[0]), min(domain.high, box[1])
    return floats(
        low,
        high,
        exclude_min=(low == domain.low and not domain.low_closed),
        exclude_max=(high == domain.high and not domain.high_closed),
        zero=domain.contains(0.0),
    )


@st.composite
def hyperparameters(draw, info):
    """Valid hyperparameters of catalogue row ``info``: interval and product domains from the spec
    table, intersected with the row's sampling box; prose domains from the row's own strategy.
    An interval or product hyperparameter with a default is sometimes left out, so that the
    defaults are exercised too."""
    values = {}
    for h in info.spec.hyperparameters:
        if isinstance(h.domain, spec.Interval):
            values[h.name] = draw(_interval_values(h.domain, info.ranges[h.name]), label=h.name)
        elif isinstance(h.domain, spec.Product):
            values[h.name] = tuple(
                draw(_interval_values(f, box), label=f"{h.name}[{i}]")
                for i, (f, box) in enumerate(zip(h.domain.factors, info.ranges[h.name]))
            )
        elif isinstance(h.domain, spec.Choice):
            values[h.name] = draw(st.sampled_from(h.domain.options), label=h.name)
    if info.described is not None:
        values.update(draw(info.described(), label="prose-domain hyperparameters"))
    for h in info.spec.hyperparameters:
        omittable = h.default not in (spec.REQUIRED, spec.COMPUTED) and not isinstance(h.domain, spec.Described)
        if omittable and draw(st.integers(0, 3)) == 0:
            del values[h.name]
    try:  # domains can constrain each other (metaoptimize's clip_decay needs hessian='diagonal'): ask the spec's
        REFERENCE.algorithms[info.algo](**info.materialize(values, REFERENCE))  # reference, which checks them
    except HyperparameterError:
        reject()
    return values


# --------------------------------------------------------------------------- propagators and linear algebra


@st.composite
def jordan_blocks(draw):
    lam = draw(st.floats(-0.95, 0.95), label="λ")
    if draw(st.booleans()):
        return props.jordan(lam, m=draw(st.integers(1, 3)))
    radius = draw(st.floats(0.0, 0.95))
    angle = draw(st.floats(0.0, math.pi))
    return props.complex_jordan(radius * complex(math.cos(angle), math.sin(angle)), m=1)


@st.composite
def propagators(draw, max_k: int = 4):
    """A propagator of Table 1 or a random union of Jordan blocks, k ≤ max_k."""
    table = [props.propagator(t) for t in props.TABLE_1 if props.propagator(t).B.shape[0] <= max_k]
    if draw(st.booleans()):
        return draw(st.sampled_from(table))
    blocks = [draw(jordan_blocks())]
    while sum(b.B.shape[0] for b in blocks) < max_k and draw(st.booleans()):
        blocks.append(draw(jordan_blocks()))
    result = props.direct_sum(*blocks)
    if result.B.shape[0] > max_k:
        return props.direct_sum(blocks[0])
    return result


@st.composite
def invertible_matrices(draw, k: int, max_condition: float = 10.0):
    """Q = U diag(s) Vᵀ with s ∈ [1/max_condition, 1] log-uniform, so κ(Q) ≤ max_condition."""
    r = rng(draw(seeds()))
    u, _ = np.linalg.qr(r.standard_normal((k, k)))
    v, _ = np.linalg.qr(r.standard_normal((k, k)))
    s = np.exp(r.uniform(-math.log(max_condition), 0.0, size=k))
    return (u * s) @ v.T


@st.composite
def orthogonal_matrices(draw, k: int):
    q, r = np.linalg.qr(rng(draw(seeds())).standard_normal((k, k)))
    return q * np.sign(np.diag(r))


@st.composite
def full_rank_memories(draw, n: int, k: int, max_condition: float = 10.0):
    """An n×k memory (n ≥ k) with singular values in [1/max_condition, 1]."""
    r = rng(draw(seeds()))
    u, _ = np.linalg.qr(r.standard_normal((n, k)))
    v, _ = np.linalg.qr(r.standard_normal((k, k)))
    s = np.exp(r.uniform(-math.log(max_condition), 0.0, size=k))
    return (u * s) @ v.T
