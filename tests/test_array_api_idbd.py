"""The array-API backend's IDBD and its non-linear extension (spec/idbd.md): what the conformance suite does not
see. x² = diag ∇²f comes from one product per basis vector, each a structure; a product that fails inside the
loop of n products is an ``ObservationError`` with the state and θ untouched; every pass runs under the cupy
emulation."""

from __future__ import annotations

import numpy as np
import pytest

array_api_strict = pytest.importorskip("array_api_strict")
import array_api_compat.numpy as compat_numpy  # noqa: E402

from stepspec import Observation  # noqa: E402
from stepspec.backends.array_api import ALGORITHMS  # noqa: E402
from stepspec.backends.array_api._core import Namespace  # noqa: E402
from stepspec.errors import ObservationError  # noqa: E402

from .test_array_api_backend import EmulatedKernels  # noqa: E402

HESSIAN = np.array([[2.0, 0.5, -0.3], [0.5, 1.0, 0.2], [-0.3, 0.2, 3.0]])
"""∇²f of f = ½θᵀAθ: its off-diagonal entries make ∇²f e_j a full column."""

SHAPES = [(2,), (1, 1)]
THETA = np.array([0.3, -0.2, 0.1])


def _split(ns: Namespace, vector) -> list:
    vector = np.asarray(vector, dtype=ns.dtype)
    return [ns.asarray(vector[:2]), ns.asarray(vector[2:].reshape(1, 1))]


def _join(ns: Namespace, parts) -> np.ndarray:
    return np.concatenate([np.asarray(ns.to_numpy(p), dtype=np.float64).reshape(-1) for p in parts])


def _observation(ns: Namespace, theta: np.ndarray, hvp=None) -> Observation:
    return Observation(grad=_split(ns, HESSIAN @ theta), hvp=hvp or (lambda v: _split(ns, HESSIAN @ _join(ns, v))))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_idbd_takes_the_diagonal_from_one_product_per_basis_vector(dtype):
    """(I2) x² = diag ∇²f, from n products with the basis vectors of the structure, in order: one step from h = 1
    decays h by [1 − α diag ∇²f]⁺, which only the diagonal (not a row sum or a column) gives."""
    ns, seen = Namespace(array_api_strict, dtype), []

    def hvp(v):
        seen.append(_join(ns, v))
        return _split(ns, HESSIAN @ seen[-1])

    optimizer = ALGORITHMS["idbd"](alpha0=0.1, eta=0.0, ns=ns)
    state = optimizer.F(optimizer.init(_split(ns, THETA), h=np.ones(3)), _observation(ns, THETA, hvp))
    expected = np.maximum(1 - 0.1 * np.diag(HESSIAN), 0) - 0.1 * HESSIAN @ THETA
    np.testing.assert_allclose(_join(ns, [state.h]), expected, rtol=1e-6 if dtype == "float32" else 1e-15)
    np.testing.assert_array_equal(np.array(seen), np.eye(3))


@pytest.mark.parametrize("use_step", [False, True], ids=["F", "step"])
@pytest.mark.parametrize("algo", ["idbd", "idbd_nonlinear"])
def test_a_failing_product_in_the_loop_changes_nothing(algo, use_step):
    """A product that returns NaN on its second call is ``ObservationError`` naming ``hvp``, and the state and θ
    the step was given are as they were (idbd_nonlinear has computed β and α by then)."""
    ns = Namespace(compat_numpy, "float64")
    optimizer = ALGORITHMS[algo](alpha0=0.1, eta=0.5, ns=ns)
    theta = _split(ns, THETA)
    state = optimizer.F(optimizer.init(theta), _observation(ns, THETA))
    before = {name: np.array(value) for name, value in state.fields().items()}
    calls = []

    def failing(v):
        calls.append(None)
        return _split(ns, HESSIAN @ _join(ns, v) * (np.nan if len(calls) == 2 else 1.0))

    obs = _observation(ns, THETA, failing)
    with pytest.raises(ObservationError) as caught:
        optimizer.step(state, obs, theta) if use_step else optimizer.F(state, obs)
    assert caught.value.param == "hvp" and len(calls) == 2
    for name, value in state.fields().items():
        np.testing.assert_array_equal(np.asarray(value), before[name], err_msg=name)
    np.testing.assert_array_equal(_join(ns, theta), THETA)


def _nonquadratic_observation(ns: Namespace, theta: np.ndarray) -> Observation:
    """f = ½θᵀAθ − Σ cos θ_i, whose Hessian A + [cos θ] changes along the run."""
    return Observation(
        grad=_split(ns, HESSIAN @ theta + np.sin(theta)),
        hvp=lambda v: _split(ns, HESSIAN @ _join(ns, v) + np.cos(theta) * _join(ns, v)),
    )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("algo", ["idbd", "idbd_nonlinear"])
def test_every_pass_runs_under_the_cupy_emulation(algo, dtype):
    """Under cupy's kernel module (emulated: only the fusable functions, arguments in the working dtype) the run
    equals NumPy's, F then G and ``step`` alike, exactly: the passes are the same operations."""
    emulated = Namespace(compat_numpy, dtype, kernels=EmulatedKernels(dtype))
    runs = []
    for ns, use_step in ((Namespace(compat_numpy, dtype), False), (emulated, False), (emulated, True)):
        optimizer = ALGORITHMS[algo](alpha0=0.1, eta=0.5, ns=ns)
        theta = _split(ns, THETA)
        state = optimizer.init(theta)
        for _ in range(4):
            obs = _nonquadratic_observation(ns, _join(ns, theta))
            if use_step:
                state, theta = optimizer.step(state, obs, theta)
            else:
                state = optimizer.F(state, obs)
                theta = [p + d for p, d in zip(theta, optimizer.G(state, obs))]
        runs.append((_join(ns, theta), {name: np.asarray(value) for name, value in state.fields().items()}))
    assert emulated.kernels.calls > 0
    for theta, fields in runs[1:]:
        np.testing.assert_array_equal(theta, runs[0][0])
        for name, value in fields.items():
            np.testing.assert_array_equal(value, runs[0][1][name], err_msg=name)
