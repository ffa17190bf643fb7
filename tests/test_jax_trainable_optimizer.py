"""The jax Trainable Optimizer's own behaviour (spec/trainable_optimizer.md#backends, spec/backends.md#jax):
the step-size warning read from the compiled step's contraction, the projection's choice made on the
device, RankOne's single reduction round, and full TO's memory limit checked on the host."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from stepspec import Observation  # noqa: E402
from stepspec.backends.jax import BACKEND, FLOAT32  # noqa: E402
from stepspec.backends.jax import trainable_optimizer as to  # noqa: E402
from stepspec.backends.jax._core import StepInput, precision  # noqa: E402
from stepspec.backends.reference import BACKEND as REFERENCE  # noqa: E402
from stepspec.conformance.tolerance import tolerance  # noqa: E402
from stepspec.errors import StateError, StepSizeWarning  # noqa: E402

CONSTRUCTORS = {
    "trainable_optimizer": to.trainable_optimizer,
    "diagonal_to": to.diagonal_to,
    "rank_one_to": to.rank_one_to,
}
LINEAR_RATE = {"trainable_optimizer": "lr_A", "diagonal_to": "lr_a", "rank_one_to": "lr_uv"}

X, G = np.array([-3.0, 0.5]), np.array([1.0, 1.0])
"""‖x‖² = 9.25 and max_i x_i² = 9 (at a negative entry): c = 9.25 η + η^b for full TO (η = 0.165 warns only
for it), 9 η + η^b for Diagonal
TO, η^b for RankOne TO."""


def _warnings(backend, algo, hp) -> list:
    """The StepSizeWarnings F emits at (X, G) from S_0."""
    optimizer = backend.algorithms[algo](**hp)
    x = backend.asarray(X)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StepSizeWarning)
        optimizer.F(optimizer.init(x), Observation(grad=backend.asarray(G), params=x))
    return [w for w in caught if issubclass(w.category, StepSizeWarning)]


@pytest.mark.parametrize("algo", list(CONSTRUCTORS))
@pytest.mark.parametrize("rates", [(0.1, 0.5), (0.165, 0.5), (0.2, 0.5), (0.0, 1.9), (0.0, 2.0), (0.0, 2.5)])
def test_step_size_warning_agrees_with_the_reference(algo, rates):
    """The compiled step records c and the host warns on c ≥ 2, exactly where the reference warns, at the
    line that called F."""
    eta, eta_b = rates
    hp = {"lr": 0.1, LINEAR_RATE[algo]: eta, "lr_b": eta_b}
    caught = _warnings(BACKEND, algo, hp)
    assert bool(caught) == bool(_warnings(REFERENCE, algo, hp))
    assert all(w.filename == __file__ for w in caught)


@pytest.mark.parametrize("algo", list(CONSTRUCTORS))
def test_a_warning_raised_as_an_error_leaves_the_state_as_it_was(algo):
    optimizer = CONSTRUCTORS[algo](lr=0.1, **{LINEAR_RATE[algo]: 0.2}, lr_b=2.5)
    s = optimizer.init(BACKEND.asarray(X))
    before = {name: np.array(value) for name, value in s.fields().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", StepSizeWarning)
        with pytest.raises(StepSizeWarning):
            optimizer.F(s, Observation(grad=BACKEND.asarray(G), params=BACKEND.asarray(X)))
    assert all(np.array_equal(before[name], value) for name, value in s.fields().items())


def _tree(flat):
    """A two-leaf pytree whose leaves, in ``tree_leaves`` order, hold ``flat``."""
    return {"w": flat[:3].reshape(3, 1), "z": flat[3]}


def _ball_case(algo, radius, center, jax_center=None):
    """G from S_t with a zero linear part and b = g (so ĝ = g) at x, on a pytree: jax's delta, flat, and the
    reference's; ``jax_center`` is the centre as jax is given it (``center`` by default)."""
    x, g = np.array([1.0, -2.0, 0.5, 4.0]), np.array([3.0, 1.0, -2.0, 0.5])
    hp = {"lr": 0.5, LINEAR_RATE[algo]: 0.0, "radius": radius, "center": center}
    expected = REFERENCE.algorithms[algo](**hp)
    expected = expected.G(expected.init(x, b=g, step=1), Observation(grad=g, params=x))
    tree = jax.tree_util.tree_map(BACKEND.asarray, _tree(x))
    optimizer = CONSTRUCTORS[algo](**{**hp, "center": center if jax_center is None else jax_center})
    s = optimizer.init(tree, b=g, step=1)
    delta = optimizer.G(s, Observation(grad=tree, params=tree))
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(delta)]), expected


@pytest.mark.parametrize("algo", list(CONSTRUCTORS))
@pytest.mark.parametrize("center", [None, np.array([0.5, 0.0, -1.0, 3.0])])
@pytest.mark.parametrize("radius", [0.3, 2.0, 50.0])
def test_projection_chooses_on_the_device_as_the_reference(algo, radius, center):
    """x − α ĝ lies outside the balls of radius 0.3 and 2 and inside that of radius 50: one program (the
    radius and centre traced) takes either branch, and agrees with the reference on each."""
    actual, expected = _ball_case(algo, radius, center)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance("float64", 1, len(actual)))


def test_a_centre_may_be_given_as_a_pytree_of_the_parameters_structure():
    center = np.array([0.5, 0.0, -1.0, 3.0])
    actual, expected = _ball_case("diagonal_to", 2.0, center, jax_center=_tree(center))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance("float64", 1, len(actual)))


def _reductions(algo, monkeypatch, **projection) -> int:
    """How many ``reduce_sum`` rounds the compiled step (F, then θ + G) traces."""
    rounds = []
    original = to.reduce_sum
    monkeypatch.setattr(to, "reduce_sum", lambda partials: rounds.append(1) or original(partials))
    optimizer = CONSTRUCTORS[algo](lr=0.1, **{LINEAR_RATE[algo]: 0.01}, **projection)
    theta = [BACKEND.asarray(np.ones((2, 3))), BACKEND.asarray(np.ones(2))]
    s = optimizer.init(theta)
    with precision("float64"):
        jax.make_jaxpr(type(optimizer).pure_step, static_argnums=1)(
            optimizer.scalars(), optimizer.static(), s.tree, StepInput(theta, theta), theta
        )
    return len(rounds)


@pytest.mark.parametrize(
    "algo, projection, rounds",
    [
        ("rank_one_to", {}, 1),
        ("rank_one_to", {"radius": 1.0}, 2),
        ("diagonal_to", {}, 0),
        ("diagonal_to", {"radius": 1.0}, 1),
    ],
)
def test_reduction_rounds_per_step(algo, projection, rounds, monkeypatch):
    """RankOne: vᵀx, uᵀr and v_{t+1}ᵀx from one round; a ball adds one (‖y − c‖²). Diagonal: none."""
    assert _reductions(algo, monkeypatch, **projection) == rounds


@pytest.mark.parametrize("backend", [BACKEND, FLOAT32], ids=lambda b: b.name)
def test_rank_one_compiled_step_agrees_with_F_then_G(backend):
    """The compiled step forms v_{t+1}ᵀx from F's sums; F then G reduces it afresh: the same θ."""
    rng = np.random.default_rng(1)
    theta = [backend.asarray(rng.standard_normal((3, 2))), backend.asarray(rng.standard_normal(4))]
    optimizer = to.rank_one_to(lr=0.3, lr_uv=0.05, lr_b=0.4, dtype=backend.dtype)
    s_step = s_split = optimizer.init(theta)
    theta_step = theta_split = theta
    for t in range(4):
        grad = [backend.asarray(np.cos(np.asarray(leaf) + t)) for leaf in theta_step]
        s_step, theta_step = optimizer.step(s_step, Observation(grad=grad, params=theta_step), theta_step)
        obs = Observation(grad=grad, params=theta_split)
        s_split = optimizer.F(s_split, obs)
        theta_split = [p + d for p, d in zip(theta_split, optimizer.G(s_split, obs))]
    rtol = tolerance(backend.dtype, 4, sum(leaf.size for leaf in theta))
    for a, b in zip(theta_step, theta_split):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol)
    np.testing.assert_allclose(np.asarray(s_step.u), np.asarray(s_split.u), rtol=rtol)


@pytest.mark.parametrize("backend", [BACKEND, FLOAT32], ids=lambda b: b.name)
def test_full_to_memory_limit_counts_eight_bytes_per_entry_in_every_precision(backend):
    """(n² + n)·8 bytes for n = 4 is 160: allowed at max_memory 160, refused at 159 before any state exists."""
    theta = backend.asarray(np.ones(4))
    to.trainable_optimizer(lr=0.1, lr_A=0.01, max_memory=160, dtype=backend.dtype).init(theta)
    with pytest.raises(StateError, match="diagonal_to or rank_one_to") as raised:
        to.trainable_optimizer(lr=0.1, lr_A=0.01, max_memory=159, dtype=backend.dtype).init(theta)
    assert raised.value.param == "theta0"
