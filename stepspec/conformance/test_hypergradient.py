"""Hypergradient-descent properties (spec/hypergradient.md#properties)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from .assertions import Context, assert_holds, assert_series_close
from .catalog import CATALOG
from .harness import construct, open_loop, perturbation_growth, reference_run, run
from .strategies import dimensions, floats, gradient_sequences, horizons, problems, vectors
from .tolerance import tolerance

HD = "hypergradient"


@st.composite
def _sgd_momenta(draw):
    """(momentum μ, nesterov): none, heavy ball or Nesterov (Alg. 5)."""
    momentum = draw(st.just(0.0) | floats(0.05, 0.95), label="momentum")
    return momentum, momentum > 0 and draw(st.booleans(), label="nesterov")


def _classical_sgd(alpha0, momentum, nesterov):
    """The fixed-step optimizer SGD-HD runs at β = 0 (spec/classical.md)."""
    if not momentum:
        return "sgd", {"lr": alpha0}
    return ("nag" if nesterov else "momentum"), {"lr": alpha0, "beta": momentum}


@pytest.mark.algo(HD)
@pytest.mark.parametrize("base", ["sgd", "adam"])
@given(data=st.data(), problem=problems(), steps=horizons())
def test_zero_hypergradient_rate_is_the_base(backend, record, base, data, problem, steps):
    """β = 0: SGD-HD is sgd(α₀), momentum(α₀, μ) or nag(α₀, μ); Adam-HD is adam(α₀, betas, eps, weight_decay)
    (paper convention), step for step."""
    theta0 = data.draw(vectors(problem.n), label="theta0")
    if base == "sgd":
        momentum, nesterov = data.draw(_sgd_momenta())
        alpha0 = data.draw(floats(1e-3, 0.5 * (1 - momentum)), label="alpha0")  # effective α/(1 − μ) ≤ 0.5
        hp = {"base": base, "alpha0": alpha0, "hypergradient_lr": 0.0, "momentum": momentum, "nesterov": nesterov}
        target_algo, target_hp = _classical_sgd(alpha0, momentum, nesterov)
    else:
        alpha0 = data.draw(floats(1e-3, 0.1), label="alpha0")
        hp = {"base": base, "alpha0": alpha0, "hypergradient_lr": 0.0}
        betas = (data.draw(floats(0.0, 0.99), label="beta1"), data.draw(floats(0.5, 0.999), label="beta2"))
        weight_decay = data.draw(st.just(0.0) | floats(0.0, 0.1), label="weight_decay")
        hp.update(betas=betas, weight_decay=weight_decay)
        target_algo, target_hp = "adam", {"lr": alpha0, "betas": betas, "weight_decay": weight_decay}
    ctx = Context(HD, "zero_hypergradient_rate_is_the_base", hp)
    target = reference_run(target_algo, target_hp, problem, theta0, steps)
    mine = run(backend, HD, construct(backend, CATALOG[HD], hp), problem, theta0, steps)
    tol = tolerance(backend.dtype, steps, perturbation_growth(target))
    assert_series_close(mine.thetas, target.thetas, tol=tol, what="theta", ctx=ctx, record=record)


@pytest.mark.algo(HD)
@given(
    n=dimensions(),
    steps=horizons(1, 20),
    alpha0=floats(0.0, 0.5),
    rate=floats(0.0, 0.01),
    momenta=_sgd_momenta(),
    data=st.data(),
)
def test_sgd_hd_step_size_rule(backend, record, n, steps, alpha0, rate, momenta, data):
    """Open loop: α_t = α₀ + β Σ_{s=2}^{t} g_s·d_{s−1}, u_t = −α_t d_t, with the direction d_t = g_t, the buffer
    b_t = μ b_{t−1} + g_t (heavy ball) or g_t + μ b_t (Nesterov) (Alg. 4, 5: α is updated before the step that
    uses it)."""
    grads = data.draw(gradient_sequences(n, steps), label="gradients")
    momentum, nesterov = momenta
    hp = {"base": "sgd", "alpha0": alpha0, "hypergradient_lr": rate, "momentum": momentum, "nesterov": nesterov}
    ctx = Context(HD, "sgd_hd_step_size_rule", hp)
    mine = open_loop(backend, HD, construct(backend, CATALOG[HD], hp), grads, np.zeros(n))
    buffer, directions = np.zeros(n), []
    for g in grads:
        buffer = momentum * buffer + g
        directions.append(g if not momentum else g + momentum * buffer if nesterov else buffer)
    expected = [
        alpha0 + rate * sum(float(grads[s] @ directions[s - 1]) for s in range(1, t)) for t in range(1, steps + 1)
    ]
    assert_series_close(
        [np.array([s["alpha"]]) for s in mine.states[1:]],
        [np.array([a]) for a in expected],
        tol=tolerance(backend.dtype, steps),
        what="α_t",
        ctx=ctx,
        record=record,
        first_t=1,
    )
    assert_series_close(
        mine.deltas,
        [-a * d for a, d in zip(expected, directions)],
        tol=tolerance(backend.dtype, steps),
        what="u_t = −α_t d_t",
        ctx=ctx,
        record=record,
        first_t=1,
    )


class _WithL2:
    """f + λ/2‖θ‖², step by step (``problem`` may be stochastic)."""

    def __init__(self, problem, weight_decay):
        self.problem, self.weight_decay, self.n = problem, weight_decay, problem.n

    def batch(self, t):
        f_t = self.problem.batch(t) if hasattr(self.problem, "batch") else self.problem
        return _L2Step(f_t, self.weight_decay)


class _L2Step:
    def __init__(self, f, weight_decay):
        self.f, self.weight_decay, self.n = f, weight_decay, f.n

    def loss(self, theta):
        return self.f.loss(theta) + 0.5 * self.weight_decay * float(theta @ theta)

    def grad(self, theta):
        return self.f.grad(theta) + self.weight_decay * theta

    def hvp(self, theta, v):
        return self.f.hvp(theta, v) + self.weight_decay * v


@pytest.mark.algo(HD)
@given(
    data=st.data(),
    problem=problems(),
    steps=horizons(),
    base=st.sampled_from(["sgd", "adam"]),
    weight_decay=floats(1e-3, 0.1),
)
def test_weight_decay_is_l2(backend, record, data, problem, steps, base, weight_decay):
    """weight_decay λ is L2 regularisation, in the step and in the hypergradient alike (the authors' code):
    hypergradient(λ) on f is hypergradient(0) on f + λ/2‖θ‖², step for step."""
    hp = {
        "base": base,
        "alpha0": data.draw(floats(1e-3, 0.1), label="alpha0"),
        "hypergradient_lr": data.draw(floats(1e-4, 0.01) if base == "sgd" else floats(1e-6, 1e-4), label="β"),
    }
    if base == "sgd":
        momentum, nesterov = data.draw(_sgd_momenta())
        hp.update(momentum=momentum, nesterov=nesterov)
    theta0 = data.draw(vectors(problem.n), label="theta0")
    ctx = Context(HD, "weight_decay_is_l2", {**hp, "weight_decay": weight_decay})
    target = reference_run(HD, hp, _WithL2(problem, weight_decay), theta0, steps)
    mine = run(
        backend, HD, construct(backend, CATALOG[HD], {**hp, "weight_decay": weight_decay}), problem, theta0, steps
    )
    tol = tolerance(backend.dtype, steps, perturbation_growth(target))
    assert_series_close(mine.thetas, target.thetas, tol=tol, what="theta", ctx=ctx, record=record)
    assert_series_close(
        [np.array([s["alpha"]]) for s in mine.states],
        [np.array([s["alpha"]]) for s in target.states],
        tol=tol,
        what="α",
        ctx=ctx,
        record=record,
    )


@pytest.mark.algo(HD)
@given(n=dimensions(), steps=horizons(1, 10), eps=floats(1e-6, 1e-2), data=st.data())
def test_adam_hd_authors_epsilon(backend, record, n, steps, eps, data):
    """With β = 0, the authors' Adam-HD step is the paper's with ε replaced by ε/√(1 − β2ᵗ) at step t, and
    differs from the paper's with ε itself: the gradients are ε·sign(z)(0.5 + |z|), z ~ N(0, 1), so that ε matters
    in every example and precision (at t = 1 the two directions g/(|g| + ε) and g/(|g| + 31.6ε) differ by at least
    0.31; with gradients of 1e-2 and ε = 1e-6 they differed by 0.024, not 10³× the float32 tolerance)."""
    grads = [eps * np.sign(g) * (0.5 + np.abs(g)) for g in data.draw(gradient_sequences(n, steps), label="gradients")]
    beta1, beta2, alpha0 = 0.9, 0.999, 0.01
    hp = {"base": "adam", "alpha0": alpha0, "hypergradient_lr": 0.0, "betas": (beta1, beta2), "eps": eps}
    ctx = Context(HD, "adam_hd_authors_epsilon", hp)
    authors = open_loop(
        backend, HD, construct(backend, CATALOG[HD], {**hp, "convention": "authors_code"}), grads, np.zeros(n)
    )
    m, v, expected = np.zeros(n), np.zeros(n), []
    for t, g in enumerate(grads, start=1):
        m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
        expected.append(-alpha0 * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps / np.sqrt(1 - beta2**t)))
    tol = tolerance(backend.dtype, steps, 4.0)
    assert_series_close(authors.deltas, expected, tol=tol, what="authors' step", ctx=ctx, record=record, first_t=1)
    paper = open_loop(backend, HD, construct(backend, CATALOG[HD], hp), grads, np.zeros(n))
    gap = max(np.max(np.abs(a - b)) for a, b in zip(authors.deltas, paper.deltas)) / alpha0
    assert_holds(gap > 1e3 * tol, f"the two ε placements agree (gap {gap:.3g})", ctx)
