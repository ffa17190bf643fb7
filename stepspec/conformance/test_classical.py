"""Classical-optimizer properties (spec/classical.md#properties)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from .assertions import Context, assert_close, assert_holds, assert_series_close
from .catalog import CATALOG
from .harness import construct, open_loop, perturbation_growth, reference_run, run
from .strategies import floats, gradient_sequences, horizons, hyperparameters, problems, vectors
from .tolerance import tolerance


def _run(backend, algo, hp, problem, theta0, steps):
    return run(backend, algo, construct(backend, CATALOG[algo], hp), problem, theta0, steps)


@st.composite
def _closed_loop(draw):
    problem = draw(problems(), label="problem")
    return problem, draw(vectors(problem.n), label="theta0"), draw(horizons(), label="steps")


@pytest.mark.parametrize("algo", ["momentum", "nag"])
@given(lr=floats(1e-3, 1.0), case=_closed_loop())
def test_zero_beta_is_sgd(backend, record, algo, lr, case):
    """momentum and nag with β = 0 are SGD: (C3)–(C5) collapse to (C2)."""
    problem, theta0, steps = case
    ctx = Context(algo, "zero_beta_is_sgd", {"lr": lr, "beta": 0.0})
    target = reference_run("sgd", {"lr": lr}, problem, theta0, steps)
    mine = _run(backend, algo, {"lr": lr, "beta": 0.0}, problem, theta0, steps)
    tol = tolerance(backend.dtype, steps, perturbation_growth(target))
    assert_series_close(mine.thetas, target.thetas, tol=tol, what="theta", ctx=ctx, record=record)


@pytest.mark.parametrize("algo", ["adam", "adamw"])
@given(data=st.data(), n=st.integers(1, 6))
def test_adam_first_step(backend, record, algo, data, n):
    """The bias corrections make the first step −lr·g'/(abs(g') + ε) entrywise (g' = g + λθ for adam's
    coupled decay), plus −lr·λθ for adamw's decoupled decay (C9)–(C11)."""
    hp = data.draw(hyperparameters(CATALOG[algo]), label="hyperparameters")
    theta0 = data.draw(vectors(n), label="theta0")
    g = data.draw(vectors(n), label="g")
    g[data.draw(st.integers(0, n - 1), label="zeroed entry")] = 0.0  # a zero entry: 0/(0 + ε) = 0
    full = CATALOG[algo].with_defaults(hp)
    ctx = Context(algo, "adam_first_step", hp)
    lr, eps, decay = full["lr"], full["eps"], full["weight_decay"]
    mine = open_loop(backend, algo, construct(backend, CATALOG[algo], hp), [g], theta0)
    moment = g + decay * theta0 if algo == "adam" else g
    # Below 1e-150 the square (1 − β2)·g'² underflows and v_1 is not what (C8) says in floating point.
    assume(np.all((moment == 0) | (np.abs(moment) > 1e-150)))
    if algo == "adam":
        expected = -lr * moment / (np.abs(moment) + eps)
    else:
        expected = -lr * (decay * theta0 + g / (np.abs(g) + eps))
    assert_close(
        mine.deltas[0], expected, tol=tolerance(backend.dtype, 0, 4.0), what="first step", ctx=ctx, record=record, t=1
    )


@pytest.mark.algo("lion")
@given(data=st.data(), n=st.integers(1, 6), steps=horizons(1, 12))
def test_lion_step_is_sign(backend, record, data, n, steps):
    """Without decay every entry of a Lion step is 0 or ±lr, with the sign of
    −(β1 m_{t-1} + (1 − β1) g_t) (C15), (C17); m follows (C16)."""
    hp = {**data.draw(hyperparameters(CATALOG["lion"]), label="hyperparameters"), "weight_decay": 0.0}
    full = CATALOG["lion"].with_defaults(hp)
    (beta1, beta2), lr = full["betas"], full["lr"]
    grads = data.draw(gradient_sequences(n, steps), label="gradients")
    ctx = Context("lion", "lion_step_is_sign", hp)
    mine = open_loop(backend, "lion", construct(backend, CATALOG["lion"], hp), grads, np.zeros(n))
    m, expected = np.zeros(n), []
    for g in grads:
        expected.append(-lr * np.sign(beta1 * m + (1 - beta1) * g))
        m = beta2 * m + (1 - beta2) * g
    tol = tolerance(backend.dtype, 0)
    assert_series_close(mine.deltas, expected, tol=tol, what="step", ctx=ctx, record=record, first_t=1)
    assert_holds(
        all(np.all((d == 0) | (np.abs(np.abs(d) - lr) <= tol * lr)) for d in mine.deltas),
        "a Lion step entry is neither 0 nor ±lr",
        ctx,
    )


@pytest.mark.algo("adamw")
@given(data=st.data(), case=_closed_loop())
def test_adamw_without_decay_is_adam(backend, record, data, case):
    """adamw(λ = 0) ≡ adam(λ = 0): the two differ only in where the decay enters (C6) vs (C11)."""
    problem, theta0, steps = case
    hp = {**data.draw(hyperparameters(CATALOG["adamw"]), label="hyperparameters"), "weight_decay": 0.0}
    ctx = Context("adamw", "adamw_without_decay_is_adam", hp)
    target = reference_run("adam", hp, problem, theta0, steps)
    mine = _run(backend, "adamw", hp, problem, theta0, steps)
    tol = tolerance(backend.dtype, steps, perturbation_growth(target))
    assert_series_close(mine.thetas, target.thetas, tol=tol, what="theta", ctx=ctx, record=record)


@pytest.mark.algo("rmsprop")
@given(data=st.data(), n=st.integers(1, 6))
def test_rmsprop_first_step(backend, record, data, n):
    """From v_0 = 0: v_1 = (1 − α)g'², so the first step is −lr·g'/(√(1 − α)·abs(g') + ε) (C13), (C14)."""
    hp = data.draw(hyperparameters(CATALOG["rmsprop"]), label="hyperparameters")
    full = CATALOG["rmsprop"].with_defaults(hp)
    theta0, g = data.draw(vectors(n), label="theta0"), data.draw(vectors(n), label="g")
    ctx = Context("rmsprop", "rmsprop_first_step", hp)
    mine = open_loop(backend, "rmsprop", construct(backend, CATALOG["rmsprop"], hp), [g], theta0)
    coupled = g + full["weight_decay"] * theta0
    expected = -full["lr"] * coupled / (np.sqrt(1 - full["alpha"]) * np.abs(coupled) + full["eps"])
    assert_close(
        mine.deltas[0], expected, tol=tolerance(backend.dtype, 0, 4.0), what="first step", ctx=ctx, record=record, t=1
    )
