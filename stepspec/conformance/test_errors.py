"""Generic: every error input of every catalogue row (spec/errors.md). The declared class (or a
subclass) is raised, it names the parameter in ``param`` and in its message, and a rejected step
leaves the state it was given untouched."""

from __future__ import annotations

import numpy as np
import pytest

from .._core import Observation, observe
from ..backends.reference import BACKEND as REFERENCE
from ..errors import StepspecError
from ..problems import random_quadratic
from .assertions import Context, assert_holds
from .catalog import CATALOG
from .error_inputs import Phase, domain_error_inputs, shared_error_inputs
from .harness import construct, native_observation, state_to_host, state_to_native

N = 3
"""Dimension of the error-input runs."""
PROBLEM = random_quadratic(N, condition=4.0, seed=0)
"""Where the valid observations come from (it has every Observation field)."""


def _cases():
    for algo, info in CATALOG.items():
        sample = info.samples[0].hyperparameters
        needs = construct(REFERENCE, info, sample, guarded=False).needs
        for case in shared_error_inputs(algo, needs) + domain_error_inputs(algo) + list(info.extra_error_inputs):
            yield pytest.param(algo, case, id=f"{algo}-{case.desc}")


def _check_raised(ctx, case, raised):
    assert_holds(
        raised is not None, f"{case.desc}: no error raised, expected {case.error.__name__}({case.param!r})", ctx
    )
    assert_holds(
        isinstance(raised, case.error),
        f"{case.desc}: raised {type(raised).__name__}: {raised}, expected {case.error.__name__}",
        ctx,
    )
    assert_holds(
        getattr(raised, "param", None) == case.param and case.param in str(raised),
        f"{case.desc}: error names {getattr(raised, 'param', None)!r} ({raised}), expected {case.param!r}",
        ctx,
    )


def _raised(call):
    try:
        call()
    except StepspecError as exc:
        return exc
    except Exception as exc:  # the wrong class is a finding, reported by _check_raised
        return exc
    return None


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


@pytest.mark.parametrize("algo, case", list(_cases()))
def test_errors(backend, record, algo, case):
    info = CATALOG[algo]
    ctx = Context(algo, "errors")
    hyperparameters = {**info.samples[0].hyperparameters, **case.hyperparameters}
    theta0 = np.linspace(-1.0, 1.0, N)
    if case.phase is Phase.CONSTRUCT:
        _check_raised(ctx, case, _raised(lambda: construct(backend, info, hyperparameters, guarded=False)))
        return
    if case.phase is Phase.INIT:
        optimizer = construct(backend, info, hyperparameters, guarded=False)
        if case.state is None and case.theta0 is None:  # the hyperparameters themselves fail against n
            _check_raised(ctx, case, _raised(lambda: optimizer.init(backend.asarray(theta0))))
            return
        s0 = state_to_host(backend, algo, optimizer.init(backend.asarray(theta0)))
        bad_theta = case.theta0(theta0) if case.theta0 else theta0
        overrides = case.state(s0) if case.state else {}
        _check_raised(
            ctx,
            case,
            _raised(lambda: optimizer.init(backend.asarray(bad_theta), **state_to_native(backend, overrides))),
        )
        return
    # STEP: two valid steps with the sample on a quadratic, then the bad observation (or the bad
    # hyperparameter) from that state; F (and G) must raise and leave the state they were given alone.
    warm = construct(backend, info, info.samples[0].hyperparameters)  # valid steps: guarded
    s, theta = warm.init(backend.asarray(theta0)), theta0
    for t in range(3):
        good = observe(PROBLEM, theta, warm.needs)
        if t == 2:
            break
        obs = native_observation(backend, good)
        s = warm.F(s, obs)
        theta = theta + np.asarray(backend.to_numpy(warm.G(s, obs)), dtype=np.float64)
    optimizer = construct(backend, info, hyperparameters, guarded=False)
    s = optimizer.init(backend.asarray(theta), **state_to_native(backend, state_to_host(backend, algo, s)))
    bad = case.observation(good)
    bad_native = native_observation(backend, bad) if isinstance(bad, Observation) else bad
    before = state_to_host(backend, algo, s)
    _check_raised(ctx, case, _raised(lambda: optimizer.F(s, bad_native)))
    assert_holds(_same(before, state_to_host(backend, algo, s)), f"{case.desc}: F changed the state it was given", ctx)
    if case.check_G:
        _check_raised(ctx, case, _raised(lambda: optimizer.G(s, bad_native)))
