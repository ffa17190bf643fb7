"""The jax MetaOptimize's own behaviour (stepspec/backends/jax/metaoptimize.py), beyond the conformance suite:
each trace form and block partition against the float64 reference, parameter pytrees against the flat vector,
the row-sparse layouts' override checks, and programs shared across equal block partitions."""

from __future__ import annotations

import collections

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from stepspec import Observation  # noqa: E402
from stepspec._core import state_fields  # noqa: E402
from stepspec.backends.jax import BACKEND  # noqa: E402
from stepspec.backends.jax.metaoptimize import MetaOptimize  # noqa: E402
from stepspec.backends.reference import BACKEND as REFERENCE  # noqa: E402
from stepspec.errors import HyperparameterError, StateError  # noqa: E402

SHAPES = [(2, 3), (), (4,)]
N = 11
IDS = np.array([0, 1, 1, 0, 2, 2, 1, 0, 0, 1, 2])


def _problem():
    """A fixed non-quadratic loss on ℝ¹¹: gradient Aθ + sin θ, its exact Hessian-vector and third products."""
    rng = np.random.default_rng(1)
    A = rng.standard_normal((N, N))
    A = A @ A.T / N + np.eye(N)

    def grad(theta):
        return A @ theta + np.sin(theta)

    def hvp(theta, u):
        return A @ u + np.cos(theta) * u

    def third(theta, u, v):
        return -np.sin(theta) * u * v

    return grad, hvp, third


def _split(flat):
    offsets = np.cumsum([0, *(int(np.prod(s)) for s in SHAPES)])
    return [BACKEND.asarray(flat[a:b].reshape(s)) for a, b, s in zip(offsets, offsets[1:], SHAPES)]


def _join(tree):
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(tree)])


def _run(backend, hp, steps=4, tree=False):
    """θ_steps and the final state's fields, on the fixed loss from θ_0 = linspace(−1, 1); ``tree`` passes
    the parameters as a list of three arrays of shapes SHAPES."""
    grad, hvp, third = _problem()
    if tree:
        wrap, unwrap = _split, _join
    else:
        wrap, unwrap = backend.asarray, np.asarray
    optimizer = backend.algorithms["metaoptimize"](**hp)
    theta = np.linspace(-1.0, 1.0, N)
    s = optimizer.init(wrap(theta))
    for _ in range(steps):
        at = theta.copy()
        obs = Observation(
            grad=wrap(grad(at)),
            params=wrap(at),
            hvp=lambda u, at=at: wrap(hvp(at, unwrap(u))),
            third=lambda u, v, at=at: wrap(third(at, unwrap(u), unwrap(v))),
        )
        s = optimizer.F(s, obs)
        theta = theta + unwrap(optimizer.G(s, obs))
    fields = s.fields() if hasattr(s, "fields") else state_fields(s)
    return theta, {name: np.asarray(value) for name, value in fields.items()}


def _assert_same(actual, expected, atol):
    theta, fields = actual
    np.testing.assert_allclose(theta, expected[0], rtol=0, atol=atol)
    for name, value in expected[1].items():
        np.testing.assert_allclose(fields[name], value, rtol=0, atol=atol, err_msg=name)


VARIANTS = {
    "row-sparse, scalar, full (Hessian-free)": dict(base="adamw", meta="adam", approximation="full"),
    "row-sparse, weight-wise, meta first": dict(base="sgdm", meta="rmsprop", blocks="weightwise", order="meta_first"),
    "row-sparse, block ids, identity σ": dict(base="rmsprop", meta="sgd", blocks=IDS, sigma="identity"),
    "row-sparse, diagonal Hessian, clipped": dict(
        base="sgd", meta="sgd", blocks="weightwise", hessian="diagonal", clip_decay=True, order="meta_first"
    ),
    "row-sparse, authors' code": dict(base="adamw", meta="adam", convention="authors_code", blocks=IDS),
    "dense, block ids, full": dict(base="adamw", meta="lion", blocks=IDS, approximation="full", hessian="exact"),
    "dense, weight-wise, 2x2": dict(base="sgdm", meta="adam", blocks="weightwise", hessian="exact"),
    "dense, scalar, L, meta first": dict(
        base="lion", meta="fixed", approximation="L", hessian="exact", order="meta_first"
    ),
}
COMMON = dict(alpha0=0.05, eta=0.02, gamma=0.9, kappa=0.1, meta_kappa=0.3)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_trace_form_is_the_reference(variant):
    """Four steps of each trace form and block partition equal the float64 reference's run to 1e-12 (every
    state field, flat); the dense weight-wise case runs its m = 11 Hessian products in a loop whose host
    callback XLA may schedule on a worker thread, where float64 survives only through the core's 32-bit wire."""
    hp = {**COMMON, **VARIANTS[variant]}
    _assert_same(_run(BACKEND, hp), _run(REFERENCE, hp), atol=1e-12)


@pytest.mark.parametrize("variant", ["row-sparse, block ids, identity σ", "dense, block ids, full"])
def test_a_parameter_pytree_is_the_flat_vector(variant):
    """The same run with the parameters as three leaves (a matrix, a 0-d array, a vector): block ids, block
    sums and expansions split by the leaves' sizes in tree_leaves order."""
    hp = {**COMMON, **VARIANTS[variant]}
    _assert_same(_run(BACKEND, hp, tree=True), _run(BACKEND, hp), atol=1e-13)


def test_row_sparse_overrides_off_the_pattern_are_rejected():
    """Hessian-free traces are stored by their entries in column b(j): a checkpoint round-trips, and an X, Y
    or Q with an entry elsewhere is a StateError naming the field, as no run reaches it."""
    hp = {**COMMON, **VARIANTS["row-sparse, scalar, full (Hessian-free)"], "blocks": IDS}
    optimizer = BACKEND.algorithms["metaoptimize"](**hp)
    theta = BACKEND.asarray(np.linspace(-1.0, 1.0, N))
    fields = _run(BACKEND, hp)[1]
    restored = optimizer.init(theta, **fields).fields()
    for name, value in fields.items():
        np.testing.assert_array_equal(np.asarray(restored[name]), value, err_msg=name)
    # weight 1 is in block 1, so its rows of X and Q hold nothing in column 0; Y's blocks are diagonal
    for name, position in (("X", (1, 0)), ("Y", (0, 1)), ("Q", (1, 0))):
        bad = fields[name].copy()
        bad[position] = 0.5
        with pytest.raises(StateError) as raised:
            optimizer.init(theta, **{name: bad})
        assert raised.value.param == name


def test_blocks_of_another_length_are_rejected():
    optimizer = BACKEND.algorithms["metaoptimize"](base="sgd", meta="sgd", alpha0=0.1, blocks=IDS)
    with pytest.raises(HyperparameterError) as raised:
        optimizer.init(BACKEND.asarray(np.zeros(N + 1)))
    assert raised.value.param == "blocks"


def test_equal_block_partitions_share_a_program():
    """Block ids are compiled in but compare by value: two optimizers with equal ids (other arrays, other
    hyperparameter values) trace F once; another partition traces it again."""
    counts = collections.Counter()

    class Counted(MetaOptimize):
        @staticmethod
        def step_F(*args):
            counts["F"] += 1
            return MetaOptimize.step_F(*args)

    def construct(blocks, eta):
        public = BACKEND.algorithms["metaoptimize"](base="sgdm", meta="adam", alpha0=0.1, eta=eta, blocks=blocks)
        return Counted("float64", needs=public.needs, **public.hyperparameters)

    theta = BACKEND.asarray(np.linspace(-1.0, 1.0, N))
    obs = Observation(grad=BACKEND.asarray(np.cos(np.linspace(0.0, 1.0, N))))
    for blocks, eta in ((IDS, 0.01), (IDS.copy().tolist(), 0.03), (np.roll(IDS, 1), 0.01)):
        optimizer = construct(blocks, eta)
        optimizer.F(optimizer.init(theta), obs)
    assert counts == {"F": 2}
