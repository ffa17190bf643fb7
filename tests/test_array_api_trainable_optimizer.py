"""The array-API Trainable Optimizer's own behaviour (spec/trainable_optimizer.md#backends,
stepspec/backends/array_api/trainable_optimizer.py): the step-size warning read on the host before any work,
in the working precision; the ball's choice made on the device; the reduction rounds and elementwise passes
of a step; RankOne's v_{t+1}ᵀx formed from the step's one round; full TO's memory limit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

array_api_strict = pytest.importorskip("array_api_strict")

from stepspec import Observation  # noqa: E402
from stepspec.backends.array_api import ALGORITHMS, strict_backend, strict_float32_backend  # noqa: E402
from stepspec.backends.array_api._core import Namespace  # noqa: E402
from stepspec.backends.reference import BACKEND as REFERENCE  # noqa: E402
from stepspec.backends.reference import FLOAT32 as REFERENCE_FLOAT32  # noqa: E402
from stepspec.conformance.tolerance import tolerance  # noqa: E402
from stepspec.errors import HyperparameterError, StateError, StepSizeWarning  # noqa: E402

VARIANTS = ("trainable_optimizer", "diagonal_to", "rank_one_to")
LINEAR_RATE = {"trainable_optimizer": "lr_A", "diagonal_to": "lr_a", "rank_one_to": "lr_uv"}
BACKENDS = {"float64": (strict_backend(), REFERENCE), "float32": (strict_float32_backend(), REFERENCE_FLOAT32)}

X, G = np.array([-3.0, 0.5]), np.array([1.0, 1.0])
"""‖x‖² = 9.25 and max_i x_i² = 9 (at a negative entry): c = 9.25 η + η^b for full TO (η = 0.165 warns only
for it), 9 η + η^b for Diagonal TO, η^b for RankOne TO."""


def _warnings(backend, algo, hp, x=X, g=G, use_step=False) -> tuple[list, int]:
    """The StepSizeWarnings F (or the step) emits at (x, g) from S_0, and the line of this file that calls it."""
    optimizer = backend.algorithms[algo](**hp)
    native = backend.asarray(x)
    state, obs = optimizer.init(native), Observation(grad=backend.asarray(g), params=native)
    call = (lambda: optimizer.step(state, obs, native)) if use_step else (lambda: optimizer.F(state, obs))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StepSizeWarning)
        call()
    return [w for w in caught if issubclass(w.category, StepSizeWarning)], call.__code__.co_firstlineno


@pytest.mark.parametrize("use_step", [False, True], ids=["F", "step"])
@pytest.mark.parametrize("algo", VARIANTS)
@pytest.mark.parametrize("rates", [(0.1, 0.5), (0.165, 0.5), (0.2, 0.5), (0.0, 1.9), (0.0, 2.0), (0.0, 2.5)])
def test_step_size_warning_agrees_with_the_reference(algo, rates, use_step):
    """c ≥ 2 warns exactly where the reference does, at the line that called F or the step."""
    eta, eta_b = rates
    hp = {"lr": 0.1, LINEAR_RATE[algo]: eta, "lr_b": eta_b}
    caught, line = _warnings(strict_backend(), algo, hp, use_step=use_step)
    assert bool(caught) == bool(_warnings(REFERENCE, algo, hp)[0])
    assert all((w.filename, w.lineno) == (__file__, line) for w in caught)


def test_diagonal_warning_squares_the_largest_entry_in_the_working_precision():
    """x₀ = 1 + 2⁻¹² squares to 1 + 2⁻¹¹ + 2⁻²⁴ exactly and to 1 + 2⁻¹¹ in float32, so with η^a = 1 and
    η^b = 1 − 2⁻¹¹ − 2⁻²⁴ the float64 c is 2 (warn) and the float32 c is 2 − 2⁻²⁴ (no warning), as the
    float32 reference computes it."""
    x0 = 1.0 + 2.0**-12
    assert float(np.float32(x0) * np.float32(x0)) != x0 * x0  # the premise: float32 rounds the square
    x, g = np.array([x0, -0.5]), np.array([0.0, 0.0])
    hp = {"lr": 0.1, "lr_a": 1.0, "lr_b": 1.0 - 2.0**-11 - 2.0**-24}
    for dtype, (backend, reference) in BACKENDS.items():
        expected = bool(_warnings(reference, "diagonal_to", hp, x, g)[0])
        assert expected == (dtype == "float64")
        assert bool(_warnings(backend, "diagonal_to", hp, x, g)[0]) == expected


# --------------------------------------------------------------------------- the ball (TO8)

FLAT_X, FLAT_G = np.array([1.0, -2.0, 0.5, 4.0]), np.array([3.0, 1.0, -2.0, 0.5])
CENTER = np.array([0.5, 0.0, -1.0, 3.0])


def _structure(backend, flat) -> list:
    """Two parameters, a (3, 1) matrix and a scalar, holding ``flat``."""
    return [backend.asarray(flat[:3].reshape(3, 1)), backend.asarray(flat[3])]


def _flat(backend, parts) -> np.ndarray:
    return np.concatenate([np.ravel(backend.to_numpy(p)) for p in parts])


def _ball_case(algo, radius, center, native_center=None):
    """G and the step (θ + G with θ ≠ x) from S_t with a zero linear part and b = g (so ĝ = g) on a structure:
    the backend's results, flat, and the reference's; ``native_center`` is the centre as the backend is
    given it (``center`` by default)."""
    backend = strict_backend()
    hp = {"lr": 0.5, LINEAR_RATE[algo]: 0.0, "lr_b": 0.0, "radius": radius, "center": center}
    reference = REFERENCE.algorithms[algo](**hp)
    obs = Observation(grad=FLAT_G, params=FLAT_X)
    expected_G = reference.G(reference.init(FLAT_X, b=FLAT_G, step=1), obs)
    theta = FLAT_X + 1.0
    expected_step = theta + reference.G(reference.F(reference.init(FLAT_X, b=FLAT_G), obs), obs)
    optimizer = backend.algorithms[algo](**{**hp, "center": center if native_center is None else native_center})
    x = _structure(backend, FLAT_X)
    native_obs = Observation(grad=_structure(backend, FLAT_G), params=x)
    delta = optimizer.G(optimizer.init(x, b=FLAT_G, step=1), native_obs)
    _, stepped = optimizer.step(optimizer.init(x, b=FLAT_G), native_obs, _structure(backend, theta))
    return (_flat(backend, delta), _flat(backend, stepped)), (expected_G, expected_step)


@pytest.mark.parametrize("algo", VARIANTS)
@pytest.mark.parametrize("center", [None, CENTER], ids=["origin", "centre"])
@pytest.mark.parametrize("radius", [0.3, 2.0, 50.0])
def test_projection_chooses_on_the_device_as_the_reference(algo, radius, center):
    """x − α ĝ lies outside the balls of radius 0.3 and 2 and inside that of radius 50: the device's choice
    (``xp.where``) takes each branch as the reference does, in G and in the step."""
    actual, expected = _ball_case(algo, radius, center)
    atol = tolerance("float64", 1, len(FLAT_X))
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=0, atol=atol)


def test_a_centre_may_be_given_as_arrays_shaped_like_the_parameters():
    actual, expected = _ball_case("diagonal_to", 2.0, CENTER, native_center=_structure(strict_backend(), CENTER))
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=0, atol=tolerance("float64", 1, len(FLAT_X)))


@pytest.mark.parametrize("algo", VARIANTS)
def test_a_centre_of_another_n_is_refused_at_init(algo):
    optimizer = strict_backend().algorithms[algo](lr=0.1, **{LINEAR_RATE[algo]: 0.01}, radius=1.0, center=CENTER)
    with pytest.raises(HyperparameterError) as raised:
        optimizer.init(strict_backend().asarray(np.ones(3)))
    assert raised.value.param == "center"


# --------------------------------------------------------------------------- what a step costs


def _costs(algo, rate, projection) -> tuple[int, int]:
    """(reduce_sum rounds, elementwise kernel calls) of one step's own work on a structure of two parameters:
    the step-size check and the fused step, after the core has validated the observation."""
    ns = Namespace(array_api_strict, "float64")
    optimizer = ALGORITHMS[algo](lr=0.1, **{LINEAR_RATE[algo]: rate}, **projection, ns=ns)
    theta = [ns.asarray(np.ones((2, 3))), ns.asarray(np.full(2, 0.5))]
    state = optimizer.init(theta)
    step = optimizer.check_observation(Observation(grad=theta, params=theta), state.structure)
    rounds, calls = [], []
    reduce_sum, fused = ns.reduce_sum, ns.fused
    ns.reduce_sum = lambda partials: rounds.append(1) or reduce_sum(partials)

    def counted(make):
        kernel = fused(make)
        return lambda *args: calls.append(make.__name__) or kernel(*args)

    ns.fused = counted
    optimizer.check_F(state, step)
    optimizer._step(state, step, theta)
    return len(rounds), len(calls)


BALL = {"radius": 1.0}


@pytest.mark.parametrize(
    "algo, rate, projection, rounds, calls",
    [
        ("rank_one_to", 0.01, {}, 1, 2),  # vᵀx, uᵀr, v_{t+1}ᵀx from one round; one pass per parameter
        ("rank_one_to", 0.01, BALL, 2, 4),  # the ball adds ‖y − c‖² and its choosing pass
        ("diagonal_to", 0.01, {}, 0, 2),  # the warning's max_i x_i² is a maximum, not a round
        ("diagonal_to", 0.01, BALL, 1, 4),
        ("trainable_optimizer", 0.01, {}, 1, 4),  # ‖x‖² for the warning; r and b, A, then θ per parameter
        ("trainable_optimizer", 0.0, {}, 0, 3),  # η^A = 0: neither ‖x‖² nor A's n² update
        ("trainable_optimizer", 0.01, BALL, 2, 6),
    ],
)
def test_reduction_rounds_and_passes_per_step(algo, rate, projection, rounds, calls):
    assert _costs(algo, rate, projection) == (rounds, calls)


@pytest.mark.parametrize("dtype", list(BACKENDS))
def test_rank_one_step_agrees_with_F_then_G(dtype):
    """The step forms v_{t+1}ᵀx from F's round; F then G reduces it afresh: the same θ and state."""
    backend = BACKENDS[dtype][0]
    rng = np.random.default_rng(1)
    theta = [backend.asarray(rng.standard_normal((3, 2))), backend.asarray(rng.standard_normal(4))]
    optimizer = backend.algorithms["rank_one_to"](lr=0.3, lr_uv=0.05, lr_b=0.4)
    s_step = s_split = optimizer.init(theta)
    theta_step = theta_split = theta
    for t in range(4):
        grad = [backend.asarray(np.cos(backend.to_numpy(leaf) + t)) for leaf in theta_step]
        s_step, theta_step = optimizer.step(s_step, Observation(grad=grad, params=theta_step), theta_step)
        obs = Observation(grad=grad, params=theta_split)
        s_split = optimizer.F(s_split, obs)
        theta_split = [p + d for p, d in zip(theta_split, optimizer.G(s_split, obs))]
    rtol = tolerance(dtype, 4, 10)
    np.testing.assert_allclose(_flat(backend, theta_step), _flat(backend, theta_split), rtol=rtol)
    np.testing.assert_allclose(backend.to_numpy(s_step.v), backend.to_numpy(s_split.v), rtol=rtol)


@pytest.mark.parametrize("dtype", list(BACKENDS))
def test_full_to_memory_limit_counts_eight_bytes_per_entry_in_every_precision(dtype):
    """(n² + n)·8 bytes for n = 4 is 160: allowed at max_memory 160, refused at 159."""
    backend = BACKENDS[dtype][0]
    theta = [backend.asarray(np.ones((2, 1))), backend.asarray(np.ones(2))]
    backend.algorithms["trainable_optimizer"](lr=0.1, lr_A=0.01, max_memory=160).init(theta)
    with pytest.raises(StateError, match="diagonal_to or rank_one_to") as raised:
        backend.algorithms["trainable_optimizer"](lr=0.1, lr_A=0.01, max_memory=159).init(theta)
    assert raised.value.param == "theta0"
