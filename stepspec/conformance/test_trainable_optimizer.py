"""Trainable Optimizer properties (spec/trainable_optimizer.md#properties)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from .._core import Observation
from ..backends.reference import BACKEND as REFERENCE
from .assertions import Context, assert_holds, assert_series_close
from .catalog import CATALOG
from .harness import (
    construct,
    native_observation,
    perturbation_growth,
    reference_run,
    run,
    state_to_host,
    state_to_native,
    update_scale,
)
from .strategies import dimensions, floats, horizons, problems, vectors
from .tolerance import UNIT_ROUNDOFF, tolerance

LINEAR_RATE = {"trainable_optimizer": "lr_A", "diagonal_to": "lr_a", "rank_one_to": "lr_uv"}
"""The name of each variant's rate for the linear part of ĝ."""
LINEAR_PART = {"trainable_optimizer": ("A",), "diagonal_to": ("a",), "rank_one_to": ("u", "v")}
VARIANTS = list(LINEAR_RATE)
FULL, DIAGONAL, RANK_ONE = VARIANTS
FD_TOLERANCE = {"float64": 1e-6, "float32": 1e-2}  # spec/tolerances.md#finite-differences


def approximation(algo: str, fields: dict, x: np.ndarray) -> np.ndarray:
    """ĝ(x) from host state fields: the definition the approximation loss is built on."""
    if algo == FULL:
        return fields["A"] @ x + fields["b"]
    if algo == DIAGONAL:
        return fields["a"] * x + fields["b"]
    return fields["u"] * float(fields["v"] @ x) + fields["b"]


def approximation_loss(algo: str, fields: dict, x, g) -> float:
    """ℓ = ½‖ĝ(x) − g‖²."""
    r = approximation(algo, fields, x) - g
    return 0.5 * float(r @ r)


@st.composite
def optimizer_variables(draw, algo: str, n: int, scale: float = 0.5) -> dict:
    """Random host optimizer variables (and step 0, so the rates are the initial ones)."""
    shapes = {"A": (n, n), "a": (n,), "u": (n,), "v": (n,), "b": (n,)}
    names = LINEAR_PART[algo] + ("b",)
    return {"step": 0} | {
        name: draw(vectors(int(np.prod(shapes[name])), scale)).reshape(shapes[name]) for name in names
    }


def _step_at(backend, algo, hp, fields, x, g, steps=1):
    """``steps`` applications of F at the fixed observation (x, g) from host ``fields``: host states."""
    optimizer = construct(backend, CATALOG[algo], hp)
    s = optimizer.init(backend.asarray(x), **state_to_native(backend, fields))
    obs = native_observation(backend, Observation(grad=g, params=x))
    states = [state_to_host(backend, algo, s)]
    for _ in range(steps):
        s = optimizer.F(s, obs)
        states.append(state_to_host(backend, algo, s))
    return states


# --------------------------------------------------------------------------- special cases


@pytest.mark.parametrize("algo", VARIANTS)
@given(data=st.data(), problem=problems(), steps=horizons())
def test_momentum_special_case(backend, record, algo, data, problem, steps):
    """Linear part 0 with rate 0, constant η^b = 1 − β, b₀ = 0: momentum(lr = α(1 − β), β) step for step."""
    alpha = data.draw(floats(1e-3, 1.0), label="alpha")
    beta = data.draw(floats(0.0, 0.99), label="beta")
    theta0 = data.draw(vectors(problem.n), label="theta0")
    hp = {"lr": alpha, LINEAR_RATE[algo]: 0.0, "lr_b": 1 - beta}
    ctx = Context(algo, "momentum_special_case", hp)
    target = reference_run("momentum", {"lr": alpha * (1 - beta), "beta": beta}, problem, theta0, steps)
    mine = run(backend, algo, construct(backend, CATALOG[algo], hp), problem, theta0, steps)
    tol = tolerance(backend.dtype, steps, perturbation_growth(target))
    assert_series_close(mine.thetas, target.thetas, tol=tol, what="theta", ctx=ctx, record=record)
    linear = LINEAR_PART[algo][0]
    assert_holds(
        all(not np.any(s[linear]) for s in mine.states), f"the linear part {linear} left 0 with a zero rate", ctx
    )


@pytest.mark.algo(DIAGONAL)
@given(data=st.data(), problem=problems(), steps=horizons())
def test_diagonal_is_full_restricted_to_diagonals(backend, record, data, problem, steps):
    """Along the backend's Diagonal run: from (a, b), Diagonal's F gives full TO's F from (diag a, b) with
    the A-update projected onto the diagonal, and its G is full TO's G at A = diag a."""
    hp = {
        "lr": data.draw(floats(1e-3, 1.0), label="lr"),
        "lr_a": data.draw(floats(0.0, 0.02), label="lr_a"),
        "lr_b": data.draw(floats(0.0, 1.0), label="lr_b"),
        "lr_decay": data.draw(floats(0.9, 1.0), label="lr_decay"),
        "lr_opt_decay": data.draw(floats(0.9, 1.0), label="lr_opt_decay"),
    }
    ctx = Context(DIAGONAL, "diagonal_is_full_restricted_to_diagonals", hp)
    theta0 = data.draw(vectors(problem.n), label="theta0")
    reference_run(DIAGONAL, hp, problem, theta0, steps)  # rejects a diverging configuration
    mine = run(backend, DIAGONAL, construct(backend, CATALOG[DIAGONAL], hp), problem, theta0, steps)
    full_hp = {**hp, "lr_A": hp["lr_a"]}
    del full_hp["lr_a"]
    full = construct(REFERENCE, CATALOG[FULL], full_hp)
    expected_a, expected_b, expected_deltas = [], [], []
    for t in range(1, steps + 1):
        previous, obs = mine.states[t - 1], mine.observations[t - 1]
        after = full.F(full.init(mine.thetas[t - 1], A=np.diag(previous["a"]), b=previous["b"], step=t - 1), obs)
        expected_a.append(np.diag(after.A))
        expected_b.append(after.b)
        current = mine.states[t]
        at = full.init(mine.thetas[t - 1], A=np.diag(current["a"]), b=current["b"], step=t)
        expected_deltas.append(full.G(at, obs))
    tol = tolerance(backend.dtype, 0, problem.n)  # the full matrix-vector product sums n terms
    for what, actual, expected, scale in (
        ("state.a", [s["a"] for s in mine.states[1:]], expected_a, None),
        ("state.b", [s["b"] for s in mine.states[1:]], expected_b, None),
        ("G", mine.deltas, expected_deltas, update_scale(expected_deltas, mine.thetas)),
    ):
        assert_series_close(actual, expected, tol=tol, what=what, ctx=ctx, record=record, first_t=1, scale=scale)


@pytest.mark.algo(RANK_ONE)
@given(n=dimensions(), data=st.data())
def test_rank_one_updates_follow_the_full_gradient(backend, record, n, data):
    """One step from a random (u, v, b): RankOne's b-step is full TO's at A = u vᵀ (the same residual),
    and its (u, v) step is (ΔA v, ΔAᵀ u) with full TO's A-step ΔA = η r xᵀ."""
    eta, eta_b = data.draw(floats(1e-3, 0.5), label="lr_uv"), data.draw(floats(0.0, 1.0), label="lr_b")
    fields = data.draw(optimizer_variables(RANK_ONE, n), label="state")
    x, g = data.draw(vectors(n), label="x"), data.draw(vectors(n), label="g")
    hp = {"lr": 0.1, "lr_uv": eta, "lr_b": eta_b}
    ctx = Context(RANK_ONE, "rank_one_updates_follow_the_full_gradient", hp)
    after = _step_at(backend, RANK_ONE, hp, fields, x, g)[1]
    u, v, A = fields["u"], fields["v"], np.outer(fields["u"], fields["v"])
    full = construct(REFERENCE, CATALOG[FULL], {"lr": 0.1, "lr_A": eta, "lr_b": eta_b})
    full_after = full.F(full.init(x, A=A, b=fields["b"]), Observation(grad=g, params=x))
    step_A = A - full_after.A  # η r xᵀ
    # The host subtraction loses u·‖A‖ against the step: a conditioning of ‖u‖‖v‖ relative to ‖u‖, ‖v‖.
    tol = tolerance(backend.dtype, 1, n * (1 + float(u @ u) + float(v @ v)))
    # b − η^b r can cancel: b is judged on the size of the terms of r = u(vᵀx) + b − g.
    b_terms = float(np.max(np.abs(fields["b"]))) + eta_b * float(
        np.max(np.abs(u)) * abs(v @ x) + np.max(np.abs(fields["b"])) + np.max(np.abs(g))
    )
    for what, actual, expected, scale in (
        ("state.u", after["u"], u - step_A @ v, None),
        ("state.v", after["v"], v - step_A.T @ u, None),
        ("state.b", after["b"], full_after.b, max(b_terms, float(np.max(np.abs(full_after.b))))),
    ):
        assert_series_close([actual], [expected], tol=tol, what=what, ctx=ctx, record=record, first_t=1, scale=scale)


# --------------------------------------------------------------------------- the approximation step


@pytest.mark.parametrize("algo", VARIANTS)
@given(n=dimensions(), data=st.data())
def test_approximation_step_is_gradient_descent(backend, record, algo, n, data):
    """F moves every optimizer variable by −η ∂ℓ/∂(variable), ℓ = ½‖ĝ(x) − g‖² differentiated by central
    finite differences (ℓ is quadratic in (A, b) and (a, b): exact but for round-off; quartic in (u, v))."""
    eta, eta_b = data.draw(floats(1e-2, 0.5), label="eta"), data.draw(floats(1e-2, 1.0), label="lr_b")
    fields = data.draw(optimizer_variables(algo, n), label="state")
    x, g = data.draw(vectors(n), label="x"), data.draw(vectors(n), label="g")
    hp = {"lr": 0.1, LINEAR_RATE[algo]: eta, "lr_b": eta_b}
    ctx = Context(algo, "approximation_step_is_gradient_descent", hp)
    after = _step_at(backend, algo, hp, fields, x, g)[1]
    h = UNIT_ROUNDOFF["float64"] ** (1 / 3)
    for name in LINEAR_PART[algo] + ("b",):
        gradient = np.zeros_like(fields[name])
        for index in np.ndindex(fields[name].shape):
            step = h * max(1.0, abs(fields[name][index]))
            plus, minus = dict(fields), dict(fields)
            plus[name], minus[name] = fields[name].copy(), fields[name].copy()
            plus[name][index] += step
            minus[name][index] -= step
            gradient[index] = (approximation_loss(algo, plus, x, g) - approximation_loss(algo, minus, x, g)) / (
                2 * step
            )
        rate = eta_b if name == "b" else eta
        assert_series_close(
            [fields[name] - after[name]],
            [rate * gradient],
            tol=FD_TOLERANCE[backend.dtype],
            what=f"state.{name} step",
            ctx=ctx,
            record=record,
            first_t=1,
        )


def _assert_residual_factor(backend, record, ctx, algo, hp, fields, x, g, factor, steps):
    """k steps at a fixed (x, g) give r_k = factor^k ⊙ r_0 (so ℓ_k = ½‖r_k‖² decreases when |factor| < 1)."""
    states = _step_at(backend, algo, hp, fields, x, g, steps)
    residuals = [approximation(algo, s, x) - g for s in states]
    expected = [factor**k * residuals[0] for k in range(steps + 1)]
    # ĝ − g cancels: the error is u·(|ĝ| + |g|) against the scale ‖r_0‖
    magnitude = max(float(np.max(np.abs(approximation(algo, s, x)))) for s in states) + float(np.max(np.abs(g)))
    conditioning = magnitude / max(float(np.max(np.abs(residuals[0]))), np.finfo(np.float64).tiny)
    tol = tolerance(backend.dtype, steps, conditioning * len(x))
    assert_series_close(residuals, expected, tol=tol, what="residual r_k", ctx=ctx, record=record)
    losses = [0.5 * float(r @ r) for r in residuals]
    slack = tol * (0.5 * float(residuals[0] @ residuals[0]))
    assert_holds(
        all(b <= a + slack for a, b in zip(losses, losses[1:])), f"ℓ does not decrease monotonically: {losses}", ctx
    )


@pytest.mark.parametrize("algo", [FULL, DIAGONAL])
@given(n=dimensions(), data=st.data())
def test_approximation_loss_decreases(backend, record, algo, n, data):
    """At a fixed (x, g) with c = η^A‖x‖² + η^b ≤ 1 (Diagonal: c_i = η^a x_i² + η^b ≤ 1), every step
    multiplies the residual by 1 − c (1 − c_i per entry), so ℓ decreases monotonically."""
    x, g = data.draw(vectors(n), label="x"), data.draw(vectors(n), label="g")
    fields = data.draw(optimizer_variables(algo, n), label="state")
    budget = data.draw(floats(0.05, 1.0), label="c")  # the bound, split between the two rates
    share = data.draw(floats(0.0, 1.0), label="share of η^A")
    curvature = float(x @ x) if algo == FULL else float(np.max(x * x))
    eta, eta_b = budget * share / max(curvature, 1e-300), budget * (1 - share)
    hp = {"lr": 0.1, LINEAR_RATE[algo]: eta, "lr_b": eta_b}
    ctx = Context(algo, "approximation_loss_decreases", hp)
    factor = 1 - (eta * float(x @ x) + eta_b) if algo == FULL else 1 - (eta * x * x + eta_b)
    _assert_residual_factor(backend, record, ctx, algo, hp, fields, x, g, factor, steps=5)


@pytest.mark.algo(RANK_ONE)
@given(n=dimensions(), data=st.data())
def test_rank_one_b_part_decreases(backend, record, n, data):
    """RankOne with η^{uv} = 0 and η^b ≤ 1 at a fixed (x, g): the residual shrinks by 1 − η^b per step."""
    x, g = data.draw(vectors(n), label="x"), data.draw(vectors(n), label="g")
    fields = data.draw(optimizer_variables(RANK_ONE, n), label="state")
    eta_b = data.draw(floats(0.05, 1.0), label="lr_b")
    hp = {"lr": 0.1, "lr_uv": 0.0, "lr_b": eta_b}
    ctx = Context(RANK_ONE, "rank_one_b_part_decreases", hp)
    _assert_residual_factor(backend, record, ctx, RANK_ONE, hp, fields, x, g, 1 - eta_b, steps=5)


@pytest.mark.algo(RANK_ONE)
def test_rank_one_uv_step_can_increase_loss(backend, record):
    """u = v = 10 e₁, x = e₁, g = 0, η^{uv} = 0.4 (η^{uv}(‖x‖² + 1) = 0.8 ≤ 1), η^b = 0: ℓ grows, because ℓ is
    quartic in (u, v) and its curvature there is of order (vᵀx)² + ‖u‖²‖x‖² = 200, not ‖x‖² + 1."""
    e1 = np.array([1.0, 0.0])
    fields = {"step": 0, "u": 10 * e1, "v": 10 * e1, "b": np.zeros(2)}
    hp = {"lr": 0.1, "lr_uv": 0.4, "lr_b": 0.0}
    ctx = Context(RANK_ONE, "rank_one_uv_step_can_increase_loss", hp)
    before, after = _step_at(backend, RANK_ONE, hp, fields, e1, np.zeros(2))
    losses = [approximation_loss(RANK_ONE, s, e1, np.zeros(2)) for s in (before, after)]
    record.observe(losses[0] / losses[1], 1.0)
    assert_holds(losses[1] > losses[0], f"ℓ did not increase: {losses[0]:.6g} → {losses[1]:.6g}", ctx)


# --------------------------------------------------------------------------- projection and schedules


@st.composite
def _to_configurations(draw, algo: str):
    """Hyperparameters of ``algo`` with a stable closed loop on the suite's problems (L ≈ 1)."""
    return {
        "lr": draw(floats(1e-3, 1.0), label="lr"),
        LINEAR_RATE[algo]: draw(floats(0.0, 0.02), label=LINEAR_RATE[algo]),
        "lr_b": draw(floats(0.0, 1.0), label="lr_b"),
    }


@pytest.mark.parametrize("algo", VARIANTS)
@given(data=st.data(), problem=problems(), steps=horizons())
def test_projection_stays_in_ball(backend, record, algo, data, problem, steps):
    """With a radius R and centre c, every iterate θ_1, θ_2, … satisfies ‖θ_t − c‖ ≤ R."""
    radius = data.draw(floats(0.1, 3.0), label="radius")
    center = data.draw(vectors(problem.n, 0.5), label="center")
    hp = {**data.draw(_to_configurations(algo)), "radius": radius, "center": center}
    ctx = Context(algo, "projection_stays_in_ball", hp)
    theta0 = data.draw(vectors(problem.n), label="theta0")
    reference_run(algo, hp, problem, theta0, steps)  # rejects a diverging configuration
    mine = run(backend, algo, construct(backend, CATALOG[algo], hp), problem, theta0, steps)
    distances = [float(np.linalg.norm(theta - center)) for theta in mine.thetas[1:]]
    tol = tolerance(backend.dtype, 1, problem.n)
    record.observe(max(distances) / radius - 1 if max(distances) > radius else 0.0, tol)
    assert_holds(max(distances) <= radius * (1 + tol), f"‖θ_t − c‖ reaches {max(distances):.6g} > R = {radius}", ctx)


@pytest.mark.parametrize("algo", VARIANTS)
@given(data=st.data(), problem=problems(), steps=horizons())
def test_projection_inactive_in_large_ball(backend, record, algo, data, problem, steps):
    """With R above the unprojected run's largest ‖θ_t − c‖ (t ≥ 1), the projected run is the unprojected one."""
    hp = data.draw(_to_configurations(algo))
    theta0 = data.draw(vectors(problem.n), label="theta0")
    center = data.draw(vectors(problem.n, 0.5), label="center")
    free = reference_run(algo, hp, problem, theta0, steps)
    radius = 1.5 * max(float(np.linalg.norm(theta - center)) for theta in free.thetas[1:])
    projected_hp = {**hp, "radius": radius, "center": center}
    ctx = Context(algo, "projection_inactive_in_large_ball", projected_hp)
    mine = run(backend, algo, construct(backend, CATALOG[algo], projected_hp), problem, theta0, steps)
    tol = tolerance(backend.dtype, steps, perturbation_growth(free))
    assert_series_close(mine.thetas, free.thetas, tol=tol, what="theta", ctx=ctx, record=record)


@pytest.mark.parametrize("algo", VARIANTS)
@given(data=st.data(), problem=problems(), steps=horizons(2))
def test_schedules(backend, record, algo, data, problem, steps):
    """Along the backend's run with decays ρ_α, ρ_η < 1, step t is one step of the constant-rate optimizer
    with α = α₀ρ_α^{t−1} and η = η₀ρ_η^{t−1} (the reference's, from the backend's S_{t−1} with the counter
    reset to 0)."""
    hp = {
        **data.draw(_to_configurations(algo)),
        "lr_decay": data.draw(floats(0.5, 0.99), label="lr_decay"),
        "lr_opt_decay": data.draw(floats(0.5, 0.99), label="lr_opt_decay"),
    }
    ctx = Context(algo, "schedules", hp)
    theta0 = data.draw(vectors(problem.n), label="theta0")
    reference_run(algo, hp, problem, theta0, steps)  # rejects a diverging configuration
    mine = run(backend, algo, construct(backend, CATALOG[algo], hp), problem, theta0, steps)
    names = LINEAR_PART[algo] + ("b",)
    expected = {name: [] for name in names} | {"G": []}
    for t in range(1, steps + 1):
        rates = {
            "lr": hp["lr"] * hp["lr_decay"] ** (t - 1),
            LINEAR_RATE[algo]: hp[LINEAR_RATE[algo]] * hp["lr_opt_decay"] ** (t - 1),
            "lr_b": hp["lr_b"] * hp["lr_opt_decay"] ** (t - 1),
        }
        constant = construct(REFERENCE, CATALOG[algo], rates)
        previous = {name: mine.states[t - 1][name] for name in names}
        after = constant.F(constant.init(mine.thetas[t - 1], step=0, **previous), mine.observations[t - 1])
        for name in names:
            expected[name].append(getattr(after, name))
        expected["G"].append(constant.G(after, mine.observations[t - 1]))
    tol = tolerance(backend.dtype, 0, problem.n)
    for name in names:
        actual = [s[name] for s in mine.states[1:]]
        assert_series_close(actual, expected[name], tol=tol, what=f"state.{name}", ctx=ctx, record=record, first_t=1)
    assert_series_close(
        mine.deltas,
        expected["G"],
        tol=tol,
        what="G",
        ctx=ctx,
        record=record,
        first_t=1,
        scale=update_scale(expected["G"], mine.thetas),
    )
