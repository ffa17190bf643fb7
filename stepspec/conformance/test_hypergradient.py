"""Hypergradient-descent properties (spec/hypergradient.md#properties)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from .assertions import Context, assert_holds, assert_series_close
from .catalog import CATALOG
from .harness import construct, open_loop, perturbation_growth, reference_run, run
from .strategies import dimensions, gradient_sequences, horizons, problems, vectors
from .tolerance import tolerance

HD = "hypergradient"


@pytest.mark.algo(HD)
@pytest.mark.parametrize("base", ["sgd", "adam"])
@given(data=st.data(), problem=problems(), steps=horizons())
def test_zero_hypergradient_rate_is_the_base(backend, record, base, data, problem, steps):
    """β = 0: SGD-HD is sgd(α₀), Adam-HD is adam(α₀, betas, eps) (paper convention), step for step."""
    alpha0 = data.draw(st.floats(1e-3, 0.5 if base == "sgd" else 0.1), label="alpha0")
    betas = (data.draw(st.floats(0.0, 0.99), label="beta1"), data.draw(st.floats(0.5, 0.999), label="beta2"))
    theta0 = data.draw(vectors(problem.n), label="theta0")
    hp = {"base": base, "alpha0": alpha0, "hypergradient_lr": 0.0, "betas": betas}
    ctx = Context(HD, "zero_hypergradient_rate_is_the_base", hp)
    target = reference_run(
        base, {"lr": alpha0} if base == "sgd" else {"lr": alpha0, "betas": betas}, problem, theta0, steps
    )
    mine = run(backend, HD, construct(backend, CATALOG[HD], hp), problem, theta0, steps)
    tol = tolerance(backend.dtype, steps, perturbation_growth(target))
    assert_series_close(mine.thetas, target.thetas, tol=tol, what="theta", ctx=ctx, record=record)


@pytest.mark.algo(HD)
@given(n=dimensions(), steps=horizons(1, 20), alpha0=st.floats(0.0, 0.5), rate=st.floats(0.0, 0.01), data=st.data())
def test_sgd_hd_step_size_rule(backend, record, n, steps, alpha0, rate, data):
    """Open loop: α_t = α₀ + β Σ_{s=2}^{t} g_s·g_{s−1} (Alg. 4: α is updated before the step that uses it)."""
    grads = data.draw(gradient_sequences(n, steps), label="gradients")
    hp = {"base": "sgd", "alpha0": alpha0, "hypergradient_lr": rate}
    ctx = Context(HD, "sgd_hd_step_size_rule", hp)
    mine = open_loop(backend, HD, construct(backend, CATALOG[HD], hp), grads, np.zeros(n))
    expected = [alpha0 + rate * sum(float(grads[s] @ grads[s - 1]) for s in range(1, t)) for t in range(1, steps + 1)]
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
        [-a * g for a, g in zip(expected, grads)],
        tol=tolerance(backend.dtype, steps),
        what="u_t = −α_t g_t",
        ctx=ctx,
        record=record,
        first_t=1,
    )


@pytest.mark.algo(HD)
@given(n=dimensions(), steps=horizons(1, 10), eps=st.floats(1e-6, 1e-2), data=st.data())
def test_adam_hd_authors_epsilon(backend, record, n, steps, eps, data):
    """With β = 0, the authors' Adam-HD step is the paper's with ε replaced by ε/√(1 − β2ᵗ) at step t, and
    differs from the paper's with ε itself (the gradients are scaled so that ε matters)."""
    grads = [1e-2 * g for g in data.draw(gradient_sequences(n, steps), label="gradients")]
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
