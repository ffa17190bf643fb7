"""Generic: the backend against the NumPy float64 reference (spec/conformance.md#discipline).

stepwise: from the reference's S_{t-1}, one F must give the reference's S_t and one G (from the
reference's S_t) its update, at every step — re-synchronised, so an early ulp cannot grow.
free_running: the backend's own T-step run must follow the reference's trajectory within the
policy's bound, which grows with T and with the conditioning (spec/tolerances.md).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from .assertions import Context, assert_series_close
from .catalog import CATALOG
from .harness import (
    construct,
    native_observation,
    perturbation_growth,
    reference_run,
    run,
    state_to_host,
    state_to_native,
    to_host_vector,
)
from .strategies import horizons, hyperparameters, problems, vectors
from .tolerance import tolerance

ALGORITHMS = list(CATALOG)


@st.composite
def _reference_runs(draw, algo):
    """(hyperparameters, problem, θ_0, reference run) with a finite reference run."""
    info = CATALOG[algo]
    hp = draw(hyperparameters(info), label="hyperparameters")
    problem = draw(problems(), label="problem")
    theta0 = draw(vectors(problem.n), label="theta0")
    steps = draw(horizons(), label="steps")
    reference = reference_run(algo, hp, problem, theta0, steps)
    return hp, problem, theta0, reference


def _array_fields(states):
    """The numeric state fields: arrays, and scalars such as ELRA's α (compared as 0-d arrays)."""
    return [
        name
        for name, value in states[0].items()
        if isinstance(value, (np.ndarray, float, int, np.floating, np.integer)) and not isinstance(value, bool)
    ]


@pytest.mark.parametrize("algo", ALGORITHMS)
@given(data=st.data())
def test_equivalence_stepwise(backend, record, algo, data):
    hp, problem, theta0, ref = data.draw(_reference_runs(algo))
    info = CATALOG[algo]
    ctx = Context(algo, "equivalence_stepwise", hp)
    optimizer = construct(backend, info, hp)
    states, deltas, conditioning = [], [], 1.0
    for t in range(1, len(ref.thetas)):
        obs = native_observation(backend, ref.observations[t - 1])
        previous = optimizer.init(backend.asarray(ref.thetas[t - 1]), **state_to_native(backend, ref.states[t - 1]))
        states.append(state_to_host(backend, algo, optimizer.F(previous, obs)))
        current = optimizer.init(backend.asarray(ref.thetas[t - 1]), **state_to_native(backend, ref.states[t]))
        deltas.append(to_host_vector(backend, optimizer.G(current, obs)))
        conditioning = max(
            conditioning, info.step_conditioning(ref.states[t - 1]), info.step_conditioning(ref.states[t])
        )
    tol = tolerance(backend.dtype, 0, conditioning)
    for name in _array_fields(ref.states):
        assert_series_close(
            [s[name] for s in states],
            [s[name] for s in ref.states[1:]],
            tol=tol,
            what=f"state.{name}",
            ctx=ctx,
            record=record,
            first_t=1,
        )
    assert_series_close(deltas, ref.deltas, tol=tol, what="G", ctx=ctx, record=record, first_t=1)


@pytest.mark.parametrize("algo", ALGORITHMS)
@given(data=st.data())
def test_equivalence_free_running(backend, record, algo, data):
    hp, problem, theta0, ref = data.draw(_reference_runs(algo))
    info = CATALOG[algo]
    ctx = Context(algo, "equivalence_free_running", hp)
    mine = run(backend, algo, construct(backend, info, hp), problem, theta0, len(ref.thetas) - 1)
    steps = len(ref.thetas) - 1
    conditioning = max(info.step_conditioning(s) for s in ref.states) * perturbation_growth(ref)
    tol = tolerance(backend.dtype, steps, conditioning)
    assert_series_close(mine.thetas, ref.thetas, tol=tol, what="theta", ctx=ctx, record=record)
    for name in _array_fields(ref.states):
        assert_series_close(
            [s[name] for s in mine.states],
            [s[name] for s in ref.states],
            tol=tol,
            what=f"state.{name}",
            ctx=ctx,
            record=record,
        )
