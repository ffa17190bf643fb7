"""The G_t blocks of spec/metaoptimize.md (M15)–(M18), checked against jax autodiff.

The update equations are stated again here in jax, independently of the reference's cells; jax
differentiates them (second derivatives too, for the h-row of the full approximation) and the
result G_t·P must equal the traces the reference's F produces from a state whose traces are P."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from stepspec import Observation
from stepspec.reference.metaoptimize import metaoptimize

jax = pytest.importorskip("jax")
jnp = jax.numpy


@pytest.fixture(autouse=True)
def float64():
    """float64 for these checks only: x64 scoped to each test (thread-local), never left on in the process,
    where the jax backend's tests check that it does not leak."""
    with jax.enable_x64(True):
        yield


N, GAMMA, KAPPA, T = 3, 0.8, 0.07, 3
HP = dict(
    rho=0.8, lam=0.95, c=0.6, eps=1e-3, eta=0.05, meta_rho=0.7, meta_lam=0.9, meta_c=0.5, meta_eps=1e-3, meta_kappa=0.2
)
rng = np.random.default_rng(7)
X_DATA, Y_DATA = rng.standard_normal((6, N)), np.sign(rng.standard_normal(6))


def loss(w):  # logistic regression in jax: non-zero third derivatives
    return jnp.mean(jnp.logaddexp(0.0, -Y_DATA * (X_DATA @ w))) + 0.05 * w @ w


def base_step(name, alpha, w, m, v, g, t):
    rho, lam, c, eps = HP["rho"], HP["lam"], HP["c"], HP["eps"]
    new_m, new_v = rho * m + (1 - rho) * g, lam * v + (1 - lam) * g**2
    if name == "sgd":
        D, new_m, new_v = g, m, v
    elif name == "sgdm":
        D, new_v = new_m, v
    elif name == "rmsprop":
        D, new_m = g / (jnp.sqrt(new_v) + eps), m
    elif name == "adamw":
        D = (new_m / (1 - rho**t)) / (jnp.sqrt(new_v / (1 - lam**t)) + eps)
    else:  # lion: sign has zero derivative; written as a constant of the current state
        D, new_v = jnp.sign(c * m + (1 - c) * g), v
    return w - alpha * D - KAPPA * alpha * w, new_m, new_v


def meta_step(name, beta, m, v, z, t):
    eta, rho, lam, c, eps, kappa = (HP[k] for k in ("eta", "meta_rho", "meta_lam", "meta_c", "meta_eps", "meta_kappa"))
    if name == "fixed":
        return beta, m, v
    new_m, new_v = rho * m + (1 - rho) * z, lam * v + (1 - lam) * z**2
    if name == "sgd":
        U, new_m, new_v = z, m, v
    elif name == "adam":
        U = (new_m / (1 - rho**t)) / (jnp.sqrt(new_v / (1 - lam**t)) + eps)
    elif name == "rmsprop":
        U, new_m = z / (jnp.sqrt(new_v) + eps), m
    else:
        U, new_v = jnp.sign(c * m + (1 - c) * z), v
    return (1 - eta * kappa) * beta - eta * U, new_m, new_v


def split(p, m):
    return p[:m], p[m : 2 * m], p[2 * m : 3 * m], p[3 * m : 3 * m + N], p[3 * m + N : 3 * m + 2 * N], p[3 * m + 2 * N :]


def one_step(base, meta, blocks, p, h):
    """Φ: (y, x, h) ↦ (y', x'), σ = exp, Algorithm 1's order; h = vec(H), columns stacked."""
    m = len(set(blocks))
    beta, mbar, vbar, w, mom, v = split(p, m)
    H = h.reshape(m, N).T
    g = jax.grad(loss)(w)
    new_beta, new_mbar, new_vbar = meta_step(meta, beta, mbar, vbar, H.T @ g, T)
    new_w, new_m, new_v = base_step(base, jnp.exp(beta)[jnp.asarray(blocks)], w, mom, v, g, T)
    return jnp.concatenate([new_beta, new_mbar, new_vbar, new_w, new_m, new_v])


CASES = list(itertools.product(["sgd", "sgdm", "adamw", "rmsprop", "lion"], ["sgd", "adam", "rmsprop", "lion"]))
CASES += [("sgd", "fixed"), ("adamw", "fixed")]  # β' = β: its blocks are trivial, two bases suffice


@pytest.mark.parametrize("base, meta", CASES)
@pytest.mark.parametrize("approximation", ["full", "2x2", "L"])
@pytest.mark.parametrize("blocks", [(0, 0, 0), (0, 1, 1)], ids=["scalar", "two-blocks"])
def test_traces_are_G_times_P(base, meta, approximation, blocks):
    m = len(set(blocks))
    optimizer = metaoptimize(
        base,
        meta,
        0.3,
        gamma=GAMMA,
        approximation=approximation,
        hessian="exact",
        kappa=KAPPA,
        blocks=np.array(blocks),
        **HP,
    )
    w = rng.standard_normal(N)
    fields = dict(
        step=T - 1,
        beta=np.log([0.3, 0.2][:m]),
        m=0.3 * rng.standard_normal(N),
        v=np.abs(rng.standard_normal(N)),
        meta_m=0.2 * rng.standard_normal(m),
        meta_v=np.abs(rng.standard_normal(m)),
        Y=rng.standard_normal((3 * m, m)),
        X=0.1 * rng.standard_normal((3 * N, m)),
        Q=0.1 * rng.standard_normal((N * m, m)) if approximation == "full" else np.zeros((0, m)),
    )
    s = optimizer.init(w, **fields)
    obs = Observation(
        grad=np.asarray(jax.grad(loss)(w)),
        params=w,
        hvp=lambda u: np.asarray(jax.jvp(jax.grad(loss), (w,), (u,))[1]),
        third=lambda u, d: np.asarray(jax.jvp(lambda x: jax.jvp(jax.grad(loss), (x,), (u,))[1], (w,), (d,))[1]),
    )
    new = optimizer.F(s, obs)

    p = np.concatenate([fields["beta"], fields["meta_m"], fields["meta_v"], w, fields["m"], fields["v"]])
    h = fields["X"][:N].T.reshape(-1)
    J_p, J_h = (np.array(J) for J in jax.jacfwd(one_step, argnums=(3, 4))(base, meta, blocks, p, h))
    Y, X = fields["Y"], fields["X"]
    C = GAMMA * Y[:m] + (1 - GAMMA) * np.eye(m)  # γY + (1 − γ)[I; 0; 0], the β rows
    P = np.vstack([C, GAMMA * Y[m:], GAMMA * X])
    if approximation == "L":
        J_p[: 3 * m, 3 * m :] = 0.0  # (16): no ∂y'/∂x
    expected = J_p @ P
    if approximation == "full":
        expected = expected + J_h @ (GAMMA * fields["Q"])
    assert np.allclose(new.Y, expected[: 3 * m], rtol=1e-10, atol=1e-12), (new.Y, expected[: 3 * m])
    assert np.allclose(new.X, expected[3 * m :], rtol=1e-10, atol=1e-12), (new.X, expected[3 * m :])

    if approximation == "full":  # the h-row: derivative of H' = ∂w'/∂(y, x)·P(h) in p and h, traces fixed

        def next_h(p_, h_):
            J = jax.jacfwd(one_step, argnums=3)(base, meta, blocks, p_, h_)[3 * m + 0 : 3 * m + N]
            P_ = jnp.vstack(
                [jnp.asarray(C), GAMMA * jnp.asarray(Y[m:]), GAMMA * h_.reshape(m, N).T, GAMMA * jnp.asarray(X[N:])]
            )
            return (J @ P_).T.reshape(-1)

        D_p, D_h = (np.asarray(D) for D in jax.jacfwd(next_h, argnums=(0, 1))(p, h))
        expected_Q = D_p @ P + D_h @ (GAMMA * fields["Q"])
        assert np.allclose(new.Q, expected_Q, rtol=1e-9, atol=1e-12), (new.Q, expected_Q)
