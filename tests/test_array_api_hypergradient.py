"""The array-API backend's hypergradient descent (spec/hypergradient.md): what the conformance suite does not see.
α is a float64 scalar on the device in every precision, so increments far below float32's round-off still move
it, while the step takes α rounded to the working precision; an override keeps its float64 digits; the state does
not alias the caller's gradient; every configuration's passes run under the cupy emulation."""

from __future__ import annotations

import numpy as np
import pytest

array_api_strict = pytest.importorskip("array_api_strict")
import array_api_compat.numpy as compat_numpy  # noqa: E402

from stepspec import Observation  # noqa: E402
from stepspec.backends.array_api import ALGORITHMS  # noqa: E402
from stepspec.backends.array_api._core import Namespace  # noqa: E402

from .test_array_api_backend import EmulatedKernels  # noqa: E402

HD = ALGORITHMS["hypergradient"]
NAMESPACES = {"strict": array_api_strict, "numpy": compat_numpy}


@pytest.mark.parametrize("namespace", sorted(NAMESPACES))
def test_alpha_keeps_increments_below_float32_roundoff(namespace):
    """In float32, SGD-HD with β = 1e-9 and g_t·g_{t−1} = 1 raises α = 1 by 1e-9 a step (HD2), a sixtieth of
    float32's half-ulp at 1: α_T = 1 + (T − 1)·1e-9 as in float64, where a float32 α would stay 1. The update is
    float32, −α_T rounded to float32 times g_T (HD6)."""
    ns, steps = Namespace(NAMESPACES[namespace], "float32"), 20
    optimizer = HD(alpha0=1.0, hypergradient_lr=1e-9, ns=ns)
    g = [ns.asarray(np.full(4, 0.5, np.float32))]
    state = optimizer.init([ns.zeros((4,))])
    for _ in range(steps):
        state = optimizer.F(state, Observation(grad=g))
    assert abs((state.alpha - 1.0) - (steps - 1) * 1e-9) <= 1e-6 * (steps - 1) * 1e-9, state.alpha
    (update,) = optimizer.G(state, Observation(grad=g))
    assert update.dtype == ns.float
    np.testing.assert_array_equal(ns.to_numpy(update), -np.float32(state.alpha) * np.float32(0.5))


@pytest.mark.parametrize("namespace", sorted(NAMESPACES))
def test_an_alpha_override_keeps_its_float64_digits(namespace):
    """``init(alpha=…)`` in float32 keeps α's float64 value (1 + 2⁻⁴⁰ is 1 in float32)."""
    ns = Namespace(NAMESPACES[namespace], "float32")
    state = HD(ns=ns).init([ns.zeros((3,))], alpha=1 + 2.0**-40)
    assert state.alpha == 1 + 2.0**-40


def test_the_state_does_not_alias_the_callers_gradient():
    """SGD-HD's direction is g_t (HD3): the state keeps its own copy, so a caller that reuses its gradient's
    memory (NumPy arrays are taken as they are) does not change S_t."""
    ns = Namespace(compat_numpy, "float64")
    optimizer = HD(ns=ns)
    grad = [ns.asarray(np.array([1.0, -2.0]))]
    state = optimizer.F(optimizer.init([ns.zeros((2,))]), Observation(grad=grad))
    grad[0][...] = 7.0
    np.testing.assert_array_equal(np.asarray(state.direction), [1.0, -2.0])


CONFIGURATIONS = {
    "sgd": {},
    "sgd-l2": {"weight_decay": 0.1},
    "heavy-ball": {"momentum": 0.5},
    "nesterov-l2": {"momentum": 0.5, "nesterov": True, "weight_decay": 0.1},
    "adam": {"base": "adam"},
    "adam-authors-l2": {"base": "adam", "convention": "authors_code", "weight_decay": 0.1},
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("configuration", sorted(CONFIGURATIONS))
def test_every_configuration_runs_under_the_cupy_emulation(configuration, dtype):
    """Under cupy's kernel module (emulated: only the fusable functions, arguments in the working dtype) every
    configuration's run equals NumPy's, F then G and ``step`` alike, exactly: the passes are the same operations."""
    hp = {"alpha0": 0.05, "hypergradient_lr": 0.01, **CONFIGURATIONS[configuration]}
    curvature = np.array([0.5, 1.0, 2.0])
    emulated = Namespace(compat_numpy, dtype, kernels=EmulatedKernels(dtype))
    runs = []
    for ns, use_step in ((Namespace(compat_numpy, dtype), False), (emulated, False), (emulated, True)):
        optimizer = HD(**hp, ns=ns)
        theta = [ns.asarray(np.array([1.0, -1.0], dtype)), ns.asarray(np.array([[0.5]], dtype))]
        state = optimizer.init(theta)
        for _ in range(4):
            flat = np.concatenate([ns.to_numpy(p).reshape(-1) for p in theta])
            grad = curvature.astype(dtype) * flat
            obs = Observation(grad=[ns.asarray(grad[:2]), ns.asarray(grad[2:].reshape(1, 1))], params=theta)
            if use_step:
                state, theta = optimizer.step(state, obs, theta)
            else:
                state = optimizer.F(state, obs)
                theta = [p + d for p, d in zip(theta, optimizer.G(state, obs))]
        fields = {name: np.asarray(value) for name, value in state.fields().items()}
        runs.append({"theta": np.concatenate([ns.to_numpy(p).reshape(-1) for p in theta]), **fields})
    assert emulated.kernels.calls > 0
    for run in runs[1:]:
        for name, value in run.items():
            np.testing.assert_array_equal(value, runs[0][name], err_msg=name)
