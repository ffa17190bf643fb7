"""The jax backend's IDBD and hypergradient descent (spec/idbd.md, spec/hypergradient.md): what the conformance
suite does not see. The n Hessian-vector products of a step are a loop in the compiled program, not n copies
of the product; a failing host product is an ``ObservationError`` with the state untouched; hypergradient
descent's α keeps its small increments in float32, where a float32 sum would drop them."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from stepspec import Observation  # noqa: E402
from stepspec.backends.jax import BACKEND, FLOAT32  # noqa: E402
from stepspec.backends.jax._core import StepInput, TracedProducts, precision  # noqa: E402
from stepspec.errors import ObservationError, StateError  # noqa: E402

HESSIAN = np.array([[2.0, 0.5, -0.3], [0.5, 1.0, 0.2], [-0.3, 0.2, 3.0]])


def _tree(n: int):
    """A two-leaf parameter pytree with n entries in all, a (2, ·) matrix and a vector."""
    return [jnp.zeros((2, n // 2)), jnp.zeros(n - 2 * (n // 2) + 1)]


def _traced_step_F(algo: str, n: int, hvp_fn):
    """The jaxpr of ``algo``'s F on an n-parameter pytree whose products are ``hvp_fn``, traced in float64."""
    optimizer = BACKEND.algorithms[algo]()
    with precision("float64"):
        params = _tree(n)
        state = optimizer.init(params).tree
        step = StepInput(params, products=TracedProducts(hvp_fn=hvp_fn))
        return jax.make_jaxpr(lambda s, x, t: type(optimizer).step_F(x, optimizer.static(), s, t))(
            state, optimizer.scalars(), step
        )


@pytest.mark.parametrize("algo", ["idbd", "idbd_nonlinear"])
def test_the_n_products_are_one_loop_in_the_program(algo):
    """F's program takes one product inside a loop over the n basis vectors or columns: its size does not grow
    with n (unrolled, the product's equations would appear n times)."""
    calls = []

    def hvp_fn(v):
        calls.append(None)
        return jax.tree_util.tree_map(lambda x: 2 * x, v)

    sizes = {n: len(_traced_step_F(algo, n, hvp_fn).jaxpr.eqns) for n in (3, 9)}
    assert sizes[3] == sizes[9], sizes
    assert len(calls) == 2, "the product was traced more than once per program"


def _quadratic_observation(theta, *, hvp=None):
    """f = ½θᵀAθ with A = HESSIAN (its off-diagonal entries make ∇²f e_j a full column)."""
    return Observation(grad=HESSIAN @ theta, hvp=hvp or (lambda v: HESSIAN @ np.asarray(v)))


@pytest.mark.parametrize("backend", [BACKEND, FLOAT32], ids=lambda b: b.name)
def test_idbd_takes_the_diagonal_of_a_full_hessian(backend):
    """(I2) x² = diag ∇²f from n host products: one step from h = 1 decays h by [1 − α diag ∇²f]⁺, which only the
    diagonal (not a row sum or a column) gives; each product is called once, in order."""
    theta, seen = np.array([0.3, -0.2, 0.1]), []

    def hvp(v):
        seen.append(np.asarray(v))
        return HESSIAN @ np.asarray(v)

    optimizer = backend.algorithms["idbd"](alpha0=0.1, eta=0.0)
    s = optimizer.F(optimizer.init(backend.asarray(theta), h=np.ones(3)), _quadratic_observation(theta, hvp=hvp))
    expected = np.maximum(1 - 0.1 * np.diag(HESSIAN), 0) - 0.1 * HESSIAN @ theta
    np.testing.assert_allclose(np.asarray(s.h), expected, rtol=1e-6 if backend is FLOAT32 else 1e-15)
    np.testing.assert_array_equal(np.array(seen), np.eye(3))


@pytest.mark.parametrize("algo", ["idbd", "idbd_nonlinear"])
def test_a_failing_product_in_the_loop_is_an_observation_error(algo):
    """A host product that returns NaN on its second call, inside the compiled loop, is ``ObservationError``
    naming ``hvp`` once the step is done, and the state is left as it was."""
    theta, calls = np.array([0.3, -0.2, 0.1]), []

    def hvp(v):
        calls.append(None)
        return HESSIAN @ np.asarray(v) * (np.nan if len(calls) == 2 else 1.0)

    optimizer = BACKEND.algorithms[algo](alpha0=0.1, eta=0.01)
    s = optimizer.F(optimizer.init(BACKEND.asarray(theta)), _quadratic_observation(theta))
    before = {name: np.array(value) for name, value in s.fields().items()}
    with pytest.raises(ObservationError, match="must be finite") as raised:
        optimizer.F(s, _quadratic_observation(theta, hvp=hvp))
    assert raised.value.param == "hvp"
    assert all(np.array_equal(before[name], np.array(value)) for name, value in s.fields().items())


def test_hypergradient_alpha_keeps_increments_below_float32_round_off():
    """SGD-HD with a constant gradient: α_t = α₀ + β(t − 1)‖g‖², increments of 4e-10 where half an ulp of α₀ = 0.01
    is 4.7e-10 in float32, so a float32 sum would keep α₀. The double-word α follows the float64 sum to far
    below float32's round-off, and the step is taken with α rounded to float32."""
    g, alpha0, rate, steps = np.full(4, 1e-2), 0.01, 1e-6, 300
    optimizer = FLOAT32.algorithms["hypergradient"](base="sgd", alpha0=alpha0, hypergradient_lr=rate)
    s = optimizer.init(FLOAT32.asarray(np.zeros(4)))
    for _ in range(steps):
        s = optimizer.F(s, Observation(grad=FLOAT32.asarray(g)))
    g32 = g.astype(np.float32).astype(np.float64)
    expected = alpha0 + rate * (steps - 1) * float(g32 @ g32)
    assert expected - alpha0 > 100 * np.spacing(np.float32(alpha0)), "the test needs α to move by many ulps"
    assert abs(s.alpha - expected) < 1e-3 * np.spacing(np.float32(expected))
    update = np.asarray(optimizer.G(s, Observation(grad=FLOAT32.asarray(g))))
    np.testing.assert_array_equal(update, -np.float32(expected) * g.astype(np.float32))


def test_hypergradient_alpha_override_keeps_twice_the_float32_digits():
    """``init(θ, alpha=x)`` in float32 keeps x to 2⁻⁴⁷ relative (a double word of float32, where float32 itself
    rounds 0.1 by 1.5e-8 relative), and a bad value is ``StateError`` naming ``alpha``."""
    optimizer = FLOAT32.algorithms["hypergradient"]()
    theta = FLOAT32.asarray(np.zeros(2))
    assert abs(optimizer.init(theta, alpha=0.1).alpha - 0.1) <= 2.0**-47 * 0.1
    for bad, message in ((np.nan, "finite"), (np.ones(2), "shape"), (1j, "real")):
        with pytest.raises(StateError, match=message) as raised:
            optimizer.init(theta, alpha=bad)
        assert raised.value.param == "alpha"
