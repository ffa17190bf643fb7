"""Generic: the backend against the NumPy float64 reference (spec/conformance.md#discipline).

stepwise: from the reference's S_{t-1}, one F must give the reference's S_t and one G (from the
reference's S_t) its update, at every step — re-synchronised, so an early ulp cannot grow.
free_running: the backend's own T-step run must follow the reference's trajectory within the
policy's bound, which grows with T and with the conditioning (spec/tolerances.md).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .assertions import Context, assert_series_close
from .catalog import CATALOG
from .harness import (
    at_step,
    construct,
    native_observation,
    numeric_fields,
    perturbation_growth,
    reference_run,
    run,
    state_to_host,
    state_to_native,
    step_sensitivities,
    to_host_vector,
    update_scale,
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


def _step_conditioning(info, ref, dtype: str) -> list[float]:
    """κ_t for t = 1 … T: the declared conditioning of the step's states and the measured sensitivity of
    the step to perturbations at the backend's round-off (spec/tolerances.md#conditioning-factors)."""
    measured = step_sensitivities(ref, dtype)
    return [
        max(info.step_conditioning(ref.states[t - 1]), info.step_conditioning(ref.states[t]), measured[t - 1])
        for t in range(1, len(ref.thetas))
    ]


@pytest.mark.parametrize("algo", ALGORITHMS)
@given(data=st.data())
def test_equivalence_stepwise(backend, record, algo, data):
    hp, problem, theta0, ref = data.draw(_reference_runs(algo))
    info = CATALOG[algo]
    ctx = Context(algo, "equivalence_stepwise", hp)
    optimizer = construct(backend, info, hp)
    states, deltas = [], []
    for t in range(1, len(ref.thetas)):
        obs = native_observation(backend, ref.observations[t - 1])
        theta = backend.asarray(ref.thetas[t - 1])
        with at_step(t):
            previous = optimizer.init(theta, **state_to_native(backend, ref.states[t - 1]))
            states.append(state_to_host(backend, algo, optimizer.F(previous, obs)))
            current = optimizer.init(theta, **state_to_native(backend, ref.states[t]))
            deltas.append(to_host_vector(backend, optimizer.G(current, obs)))
    tols = [tolerance(backend.dtype, 0, kappa) for kappa in _step_conditioning(info, ref, backend.dtype)]
    for name in numeric_fields(ref.states[0]):
        assert_series_close(
            [s[name] for s in states],
            [s[name] for s in ref.states[1:]],
            tol=tols,
            what=f"state.{name}",
            ctx=ctx,
            record=record,
            first_t=1,
        )
    assert_series_close(
        deltas,
        ref.deltas,
        tol=tols,
        what="G",
        ctx=ctx,
        record=record,
        first_t=1,
        scale=update_scale(ref.deltas, ref.thetas),
    )


@pytest.mark.parametrize("algo", ALGORITHMS)
@given(data=st.data())
def test_equivalence_free_running(backend, record, algo, data):
    hp, problem, theta0, ref = data.draw(_reference_runs(algo))
    info = CATALOG[algo]
    ctx = Context(algo, "equivalence_free_running", hp)
    mine = run(backend, algo, construct(backend, info, hp), problem, theta0, len(ref.thetas) - 1)
    steps = len(ref.thetas) - 1
    conditioning = max(_step_conditioning(info, ref, backend.dtype)) * perturbation_growth(ref, backend.dtype)
    tol = tolerance(backend.dtype, steps, conditioning)
    assert_series_close(mine.thetas, ref.thetas, tol=tol, what="theta", ctx=ctx, record=record)
    for name in numeric_fields(ref.states[0]):
        assert_series_close(
            [s[name] for s in mine.states],
            [s[name] for s in ref.states],
            tol=tol,
            what=f"state.{name}",
            ctx=ctx,
            record=record,
        )
