"""Generic: states are values (spec/formalism.md#states). F and G leave their inputs untouched,
``init`` overrides reproduce any state exactly, and a run is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from . import strategies as sst
from .assertions import Context, assert_holds
from .catalog import CATALOG
from .harness import at_step, construct, native_observation, reference_run, replay, state_to_host, state_to_native

ALGORITHMS = list(CATALOG)


def _changed(a: dict, b: dict) -> list[str]:
    """The fields in which two host states differ (bit for bit), in declaration order."""
    return [
        k
        for k in [*a, *(k for k in b if k not in a)]
        if k not in a
        or k not in b
        or not ((a[k] is None and b[k] is None) or np.array_equal(np.asarray(a[k]), np.asarray(b[k])))
    ]


@st.composite
def _cases(draw, algo):
    """(hyperparameters, problem, θ_0, reference run) for a configuration whose reference run stays
    finite (a diverging one would end in rejected non-finite gradients, not in a finding)."""
    hp = draw(sst.hyperparameters(CATALOG[algo]), label="hyperparameters")
    problem = draw(sst.problems(), label="problem")
    theta0 = draw(sst.vectors(problem.n), label="theta0")
    return hp, problem, theta0, reference_run(algo, hp, problem, theta0, draw(sst.horizons(1, 8), label="steps"))


@pytest.mark.parametrize("algo", ALGORITHMS)
@given(data=st.data())
def test_inputs_untouched(backend, record, algo, data):
    """F(S, obs) and G(S, obs) do not modify S or obs (fed the reference run's observations)."""
    hp, problem, theta0, reference = data.draw(_cases(algo))
    ctx = Context(algo, "inputs_untouched", hp)
    optimizer = construct(backend, CATALOG[algo], hp)
    s = optimizer.init(backend.asarray(theta0))
    for t, host_obs in enumerate(reference.observations, start=1):
        obs = native_observation(backend, host_obs)
        before, grad_before = state_to_host(backend, algo, s), np.array(backend.to_numpy(obs.grad))
        with at_step(t):
            new = optimizer.F(s, obs)
            changed = _changed(before, state_to_host(backend, algo, s))
            assert_holds(not changed, f"F modified its input state at t={t}: field(s) {', '.join(changed)}", ctx)
            new_before = state_to_host(backend, algo, new)
            optimizer.G(new, obs)
        changed = _changed(new_before, state_to_host(backend, algo, new))
        assert_holds(not changed, f"G modified the state at t={t}: field(s) {', '.join(changed)}", ctx)
        assert_holds(np.array_equal(grad_before, backend.to_numpy(obs.grad)), f"F or G modified obs.grad at t={t}", ctx)
        s = new


@pytest.mark.parametrize("algo", ALGORITHMS)
@given(data=st.data())
def test_init_overrides_round_trip(backend, record, algo, data):
    """init(θ, **fields(S_t)) is S_t, field for field and bit for bit, for every S_t of a run."""
    hp, problem, theta0, reference = data.draw(_cases(algo))
    ctx = Context(algo, "init_overrides_round_trip", hp)
    optimizer = construct(backend, CATALOG[algo], hp)
    result = replay(backend, algo, optimizer, reference.observations, theta0)
    for t, (theta, fields) in enumerate(zip(result.thetas, result.states)):
        with at_step(t):
            rebuilt = optimizer.init(backend.asarray(theta), **state_to_native(backend, fields))
        changed = _changed(fields, state_to_host(backend, algo, rebuilt))
        assert_holds(not changed, f"init(θ_{t}, **S_{t}) does not reproduce S_{t}: field(s) {', '.join(changed)}", ctx)


@pytest.mark.parametrize("algo", ALGORITHMS)
@given(data=st.data())
def test_deterministic(backend, record, algo, data):
    """Two runs from the same S_0 and observations are identical, bit for bit."""
    hp, problem, theta0, reference = data.draw(_cases(algo))
    ctx = Context(algo, "deterministic", hp)
    first, second = (
        replay(backend, algo, construct(backend, CATALOG[algo], hp), reference.observations, theta0) for _ in range(2)
    )
    assert_holds(
        all(np.array_equal(a, b) for a, b in zip(first.thetas, second.thetas)),
        "two identical runs gave different trajectories",
        ctx,
    )
