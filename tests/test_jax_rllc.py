"""The jax RLLC family's own behaviour (spec/rllc.md#backends, spec/backends.md#jax): the relaxed inverse's rank
decision compiled as ``jnp.where``, the rule's errors raised on the host with the state untouched, and a
memory rule with a pytree hidden state traced into the compiled F."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from stepspec import Observation  # noqa: E402
from stepspec.backends.jax import BACKEND, FLOAT32  # noqa: E402
from stepspec.conformance.tolerance import tolerance  # noqa: E402
from stepspec.errors import HyperparameterError  # noqa: E402

NAG_B, NAG_A = np.diag([0.9, 0.0]), np.array([1.0, 1.0])
SKEW_B, SKEW_A = np.diag([0.9, 0.5]), np.array([1.0, 0.3])
"""A propagator whose rank-one memory g aᵀ has columns that are not copies of each other: its Gram matrix is
singular only up to round-off."""


def _step(optimizer, backend, state, grad):
    return optimizer.F(state, Observation(grad=backend.asarray(grad)))


@pytest.mark.parametrize("backend", [BACKEND, FLOAT32], ids=lambda b: b.name)
@pytest.mark.parametrize("n", [6, 1000, 100_000])
@pytest.mark.parametrize("eps", [0.0, 1e-8])
@pytest.mark.parametrize("seed", range(4))
def test_a_rank_one_memory_takes_the_minimum_norm_step(backend, n, eps, seed):
    """M_1 = g_1 aᵀ has rank 1 (k = 2): the Gram matrix's second eigenvalue is round-off and must count as zero
    (R3c), leaving the closed form M_ε⁺g_2 = a ⟨g_1, g_2⟩/(σ² + ε), σ² = ‖a‖²‖g_1‖². Inverting the round-off
    eigenvalue makes the law step O(1) wrong. The round-off eigenvalue is ±0.3·u·λ_max (measured), so several
    seeds make a positive one, which only the cut keeps from being inverted."""
    rng = np.random.default_rng([n, seed])
    g1, g2 = rng.standard_normal(n), rng.standard_normal(n)
    g1 = backend.to_numpy(backend.asarray(g1)).astype(np.float64)  # the values the backend holds
    g2 = backend.to_numpy(backend.asarray(g2)).astype(np.float64)
    c2, L0 = 0.5, np.array([0.3, -0.2])
    optimizer = backend.algorithms["lm_rllc"](SKEW_B, SKEW_A, c1=0.1, c2=c2, L0=L0, eps=eps)
    state = _step(optimizer, backend, optimizer.init(backend.asarray(np.zeros(n))), g1)
    np.testing.assert_array_equal(np.asarray(state.L), np.asarray(L0, np.asarray(state.L).dtype))  # M_0⁺ = 0
    state = _step(optimizer, backend, state, g2)
    sigma2 = (SKEW_A @ SKEW_A) * (g1 @ g1)
    expected_step = SKEW_A * (g1 @ g2) / (sigma2 + eps)
    scale = np.linalg.norm(g2) / np.sqrt(sigma2)  # ‖g‖/σ_min, the natural scale of M⁺g (spec/tolerances.md)
    deviation = np.max(np.abs((np.asarray(state.L, np.float64) - L0) / c2 - expected_step)) / scale
    assert deviation <= tolerance(backend.dtype, 0, 1.0), deviation


@pytest.mark.parametrize("backend", [BACKEND, FLOAT32], ids=lambda b: b.name)
@pytest.mark.parametrize("n", [6, 1000, 200_000])
@pytest.mark.parametrize("sigma_ratio", [0.1, 1e-3])
def test_a_full_rank_memory_is_inverted_to_the_policy(backend, n, sigma_ratio):
    """A rank-2 memory with σ_2/σ_1 = ``sigma_ratio`` keeps both directions and M⁺g is the least-squares solution
    within K·u·κ(M)². A Gram matrix alone cannot do this in float32 at scale: its eigenvalues are round-off below
    about u·σ_max², which cuts σ_2 = 0.1·σ_1 once √(n·u) > 0.1, n ≈ 8·10⁴ (measured 16 times the tolerance at
    n = 10⁵); the second round holds σ_2 relative to itself."""
    rng = np.random.default_rng(n)
    U, _ = np.linalg.qr(rng.standard_normal((n, 2)))
    V, _ = np.linalg.qr(rng.standard_normal((2, 2)))
    M = backend.to_numpy(backend.asarray((U * [1.0, sigma_ratio]) @ V.T)).astype(np.float64)
    g = backend.to_numpy(backend.asarray(rng.standard_normal(n))).astype(np.float64)
    optimizer = backend.algorithms["lm_rllc"](NAG_B, NAG_A, c1=0.1, c2=1.0, L0=np.zeros(2), eps=0.0)
    state = _step(optimizer, backend, optimizer.init(backend.asarray(np.zeros(n)), M=backend.asarray(M)), g)
    sigma = np.linalg.svd(M, compute_uv=False)
    expected = np.linalg.lstsq(M, g, rcond=None)[0]
    deviation = np.max(np.abs(np.asarray(state.L, np.float64) - expected)) / (np.linalg.norm(g) / sigma[-1])
    assert deviation <= tolerance(backend.dtype, 0, (sigma[0] / sigma[-1]) ** 2), deviation


def _nan_rule(M, H, g):
    return jnp.where(H > 1.5, jnp.nan, M * 0.5) + g[:, None], H + 1.0


@pytest.mark.parametrize("backend", [BACKEND, FLOAT32], ids=lambda b: b.name)
def test_a_non_finite_memory_from_the_rule_is_raised_with_the_state_untouched(backend):
    """The compiled F records whether the rule's M' is finite; the host raises HyperparameterError naming
    ``rule`` at the step it happens (here the third, decided by H inside the compiled step)."""
    optimizer = backend.algorithms["rllc"](_nan_rule, c1=0.1, c2=0.1, L0=[0.1, 0.2], H0=0.0)
    state = optimizer.init(backend.asarray(np.zeros(3)))
    for _ in range(2):
        state = _step(optimizer, backend, state, np.ones(3))
    before = {name: np.array(value) for name, value in state.fields().items()}
    with pytest.raises(HyperparameterError, match="non-finite") as raised:
        _step(optimizer, backend, state, np.ones(3))
    assert raised.value.param == "rule"
    assert all(np.array_equal(before[name], np.asarray(value)) for name, value in state.fields().items())


def _host_rule(M, H, g):
    return np.asarray(M) * 0.5, H  # computes on the host: not traceable


def _branching_rule(M, H, g):
    return (M if H > 0 else M * 0.5), H  # a Python branch on a traced value


@pytest.mark.parametrize("rule", [_host_rule, _branching_rule])
def test_a_rule_jax_cannot_trace_is_a_hyperparameter_error(rule):
    optimizer = BACKEND.algorithms["rllc"](rule, c1=0.1, c2=0.1, L0=[0.1, 0.2], H0=0.0)
    state = optimizer.init(BACKEND.asarray(np.zeros(3)))
    with pytest.raises(HyperparameterError, match="jax-traceable") as raised:
        _step(optimizer, BACKEND, state, np.ones(3))
    assert raised.value.param == "rule"


def test_a_pytree_hidden_state_runs_compiled():
    """H may be any pytree of arrays: here a step counter and a running sum of the gradient, updated by the
    compiled F, over a parameter pytree of two leaves (the rule sees the flat memory and gradient)."""

    def rule(M, H, g):
        return M * 0.5 + g[:, None] * jnp.array([[1.0, 0.0]]), {"count": H["count"] + 1, "total": H["total"] + g}

    theta = [BACKEND.asarray(np.zeros((2, 2))), BACKEND.asarray(np.zeros(1))]
    optimizer = BACKEND.algorithms["rllc"](rule, c1=0.1, c2=0.1, L0=[0.1, 0.2], H0={"count": 0, "total": np.zeros(5)})
    state = optimizer.init(theta)
    grads = [np.arange(5.0) + t for t in range(3)]
    for g in grads:
        state = optimizer.F(state, Observation(grad=[BACKEND.asarray(g[:4].reshape(2, 2)), BACKEND.asarray(g[4:])]))
    assert int(state.H["count"]) == 3
    np.testing.assert_array_equal(np.asarray(state.H["total"]), sum(grads))
    expected_unit = sum(0.5 ** (2 - t) * g for t, g in enumerate(grads))
    np.testing.assert_allclose(np.asarray(state.M), np.stack([expected_unit, np.zeros(5)], axis=1), rtol=1e-15)


@dataclasses.dataclass
class _ScaledRule:
    """A callable dataclass: ``eq=True`` makes it unhashable, as a static argument of ``jax.jit`` must not be."""

    factor: float

    def __call__(self, M, H, g):
        return self.factor * M + g[:, None], H


def test_an_unhashable_callable_is_a_rule():
    optimizer = BACKEND.algorithms["rllc"](_ScaledRule(0.5), c1=0.1, c2=0.1, L0=[0.1])
    state = optimizer.init(BACKEND.asarray(np.zeros(3)))
    for g in (np.ones(3), np.arange(3.0)):
        state = _step(optimizer, BACKEND, state, g)
    np.testing.assert_array_equal(np.asarray(state.M)[:, 0], 0.5 * np.ones(3) + np.arange(3.0))
