"""MetaOptimize properties (spec/metaoptimize.md#properties): the special cases IDBD, Xu et al. and
hypergradient descent, the structure of the traces, the η = 0 reduction, Algorithms 2 and 3, the
surrogate meta-gradient against central differences through the backend's own run, robustness to a
small initial step size, and the authors' convention."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from .. import problems as P
from .._core import observe, state_fields
from ..backends.reference import BACKEND as REFERENCE
from .assertions import Context, assert_holds, assert_series_close
from .catalog import CATALOG
from .convergence import steps_to_tolerance
from .harness import (
    construct,
    native_observation,
    open_loop,
    perturbation_growth,
    reference_run,
    run,
    state_to_host,
    state_to_native,
)
from .strategies import (
    dimensions,
    floats,
    gradient_sequences,
    horizons,
    hyperparameters,
    problems,
    seeds,
    vectors,
)
from .surrogate import surrogate_gap
from .tolerance import tolerance

MO = "metaoptimize"


def _run(backend, algo, hp, problem, theta0, steps, initial_state=None):
    return run(backend, algo, construct(backend, CATALOG[algo], hp), problem, theta0, steps, initial_state)


def _assert_same_runs(backend, mine, target, steps, ctx, record, fields=()):
    """Closed-loop runs agree within the policy: κ = the reference run's perturbation growth."""
    tol = tolerance(backend.dtype, steps, perturbation_growth(target))
    assert_series_close(mine.thetas, target.thetas, tol=tol, what="theta", ctx=ctx, record=record)
    for name in fields:
        assert_series_close(
            [s[name] for s in mine.states],
            [s[name] for s in target.states],
            tol=tol,
            what=f"state.{name}",
            ctx=ctx,
            record=record,
        )


# --------------------------------------------------------------------------- special cases (App. B)

IDBD_CONFIG = dict(
    base="sgd", meta="sgd", gamma=1.0, blocks="weightwise", approximation="L", sigma="exponential", order="meta_first"
)


@st.composite
def _sutton_streams(draw):
    n = draw(st.integers(1, 8), label="n")
    return P.SuttonTask(
        n=n, relevant=draw(st.integers(1, n)), flip_every=draw(st.integers(1, 20)), seed=draw(seeds())
    ), n


@pytest.mark.parametrize("algo", ["idbd", MO])
@given(
    stream=_sutton_streams(),
    alpha0=floats(1e-3, 0.1),
    eta=floats(0.0, 0.05),
    steps=horizons(1, 60),
    theta_seed=seeds(),
)
def test_idbd_is_a_special_case(backend, record, algo, stream, alpha0, eta, steps, theta_seed):
    """IDBD ≡ MetaOptimize(sgd, sgd, L, γ = 1, weight-wise, exp, diagonal Hessian clipped, meta_first) on
    Sutton's linear-regression streams: the backend's `algo` against the reference's other side."""
    problem, n = stream
    theta0 = np.random.default_rng(theta_seed).standard_normal(n)
    mo = dict(IDBD_CONFIG, alpha0=alpha0, eta=eta, hessian="diagonal", clip_decay=True)
    ours = {"alpha0": alpha0, "eta": eta}
    mine_hp, target_algo, target_hp = (ours, MO, mo) if algo == "idbd" else (mo, "idbd", ours)
    ctx = Context(algo, "idbd_is_a_special_case", mine_hp)
    target = reference_run(target_algo, target_hp, problem, theta0, steps)
    _assert_same_runs(backend, _run(backend, algo, mine_hp, problem, theta0, steps), target, steps, ctx, record)


@pytest.mark.parametrize("algo", ["idbd_nonlinear", MO])
@given(
    problem=problems(kinds=("logistic", "minibatch_logistic")),
    alpha0=floats(1e-3, 0.3),
    eta=floats(0.0, 0.05),
    steps=horizons(1, 30),
    theta_seed=seeds(),
)
def test_xu_is_a_special_case(backend, record, algo, problem, alpha0, eta, steps, theta_seed):
    """idbd_nonlinear ≡ the IDBD configuration with the exact Hessian and no clipping, on non-quadratic losses."""
    theta0 = np.random.default_rng(theta_seed).standard_normal(problem.n)
    mo = dict(IDBD_CONFIG, alpha0=alpha0, eta=eta, hessian="exact")
    ours = {"alpha0": alpha0, "eta": eta}
    mine_hp, target_algo, target_hp = (ours, MO, mo) if algo == "idbd_nonlinear" else (mo, "idbd_nonlinear", ours)
    ctx = Context(algo, "xu_is_a_special_case", mine_hp)
    target = reference_run(target_algo, target_hp, problem, theta0, steps)
    _assert_same_runs(backend, _run(backend, algo, mine_hp, problem, theta0, steps), target, steps, ctx, record)


def _hd_as_metaoptimize(alpha0, eta, approximation, hessian, order="meta_first", momentum=0.0):
    """SGD-HD(α₀, β = eta, momentum μ) as MetaOptimize: its SGDm step is (1 − μ) times the heavy-ball one, so
    α₀ and η are rescaled by 1/(1 − μ) and 1/(1 − μ)² (spec/hypergradient.md#hypergradient)."""
    momentum_base = {"base": "sgdm", "rho": momentum} if momentum else {"base": "sgd"}
    return dict(
        momentum_base,
        meta="sgd",
        alpha0=alpha0 / (1 - momentum),
        eta=eta / (1 - momentum) ** 2,
        gamma=0.0,
        sigma="identity",
        approximation=approximation,
        hessian=hessian,
        order=order,
    )


@pytest.mark.parametrize("algo", ["hypergradient", MO])
@given(
    problem=problems(),
    alpha0=floats(1e-3, 0.5),
    eta=floats(0.0, 0.05),
    momentum=st.just(0.0) | floats(0.0, 0.95),
    steps=horizons(),
    approximation=st.sampled_from(["2x2", "L"]),
    hessian=st.sampled_from(["free", "exact"]),
    theta_seed=seeds(),
)
def test_hypergradient_is_a_special_case(
    backend, record, algo, problem, alpha0, eta, momentum, steps, approximation, hessian, theta_seed
):
    """hypergradient(sgd, momentum μ) ≡ metaoptimize(sgd, or sgdm with ρ = μ, α₀/(1 − μ), η/(1 − μ)²; sgd meta,
    γ = 0, identity σ, scalar, meta_first), any approximation."""
    theta0 = np.random.default_rng(theta_seed).standard_normal(problem.n)
    mo = _hd_as_metaoptimize(alpha0, eta, approximation, hessian, momentum=momentum)
    ours = {"base": "sgd", "alpha0": alpha0, "hypergradient_lr": eta, "momentum": momentum}
    mine_hp, target_algo, target_hp = (ours, MO, mo) if algo == "hypergradient" else (mo, "hypergradient", ours)
    ctx = Context(algo, "hypergradient_is_a_special_case", mine_hp)
    target = reference_run(target_algo, target_hp, problem, theta0, steps)
    _assert_same_runs(backend, _run(backend, algo, mine_hp, problem, theta0, steps), target, steps, ctx, record)


@pytest.mark.algo(MO)
@given(n=dimensions(), steps=horizons(2, 20), alpha0=floats(0.01, 0.5), eta=floats(1e-3, 0.05), data=st.data())
def test_hypergradient_in_algorithm_1_order(backend, record, n, steps, alpha0, eta, data):
    """Algorithm 1's order (base_first) against the step-size-first order of hypergradient descent:
    open loop, the step sizes of base_first are those of meta_first one step later; closed loop, the
    backend's base_first run is the reference's, and the reference's two orders differ by O(η): halving η
    scales the gap by a factor in [0.35, 0.75] (in the reference's precision, whatever the backend's)."""
    grads = [g + 0.5 for g in data.draw(gradient_sequences(n, steps), label="gradients")]  # no zero entry
    ctx = Context(MO, "hypergradient_in_algorithm_1_order", {"alpha0": alpha0, "eta": eta})
    runs = {
        order: open_loop(
            backend,
            MO,
            construct(backend, CATALOG[MO], _hd_as_metaoptimize(alpha0, eta, "L", "free", order)),
            grads,
            np.zeros(n),
        )
        for order in ("base_first", "meta_first")
    }
    step_sizes = {order: [-(d / g).mean() for d, g in zip(r.deltas, grads)] for order, r in runs.items()}
    tol = tolerance(backend.dtype, steps)
    assert_series_close(
        [np.array([a]) for a in step_sizes["base_first"][1:]],
        [np.array([a]) for a in step_sizes["meta_first"][:-1]],
        tol=tol,
        what="α of base_first at t+1 vs meta_first at t",
        ctx=ctx,
        record=record,
        first_t=2,
    )

    problem = data.draw(problems(n=n, kinds=("quadratic", "logistic")), label="problem")
    theta0 = data.draw(vectors(n), label="theta0")

    def gap(rate):
        first, second = (
            reference_run(MO, _hd_as_metaoptimize(alpha0, rate, "L", "free", order), problem, theta0, steps)
            for order in ("base_first", "meta_first")
        )
        mine = _run(backend, MO, _hd_as_metaoptimize(alpha0, rate, "L", "free", "base_first"), problem, theta0, steps)
        assert_series_close(
            mine.thetas,
            first.thetas,
            tol=tolerance(backend.dtype, steps, perturbation_growth(first)),
            what="theta (base_first)",
            ctx=ctx,
            record=record,
        )
        drift = max(float(np.max(np.abs(s["beta"] - alpha0))) for s in first.states)  # σ = identity: β = α
        return max(np.max(np.abs(a - b)) for a, b in zip(first.thetas, second.thetas)), drift

    (big, drift), (small, _) = gap(eta), gap(eta / 2)
    reference_tol = tolerance(REFERENCE.dtype, steps)  # the gaps are the reference's runs', in its precision
    assume(big > 1e6 * reference_tol * max(1.0, np.max(np.abs(theta0))))  # an O(η) gap well above round-off
    assume(drift <= 0.5 * alpha0)  # the O(η) regime: α changes little over the run (not 0.5 → 15)
    assert_holds(
        0.35 <= small / big <= 0.75, f"halving η scaled the order gap by {small / big:.3f}, expected ≈ 0.5", ctx
    )


# --------------------------------------------------------------------------- the step size a step was taken with

META_RATE = {MO: "eta", "idbd": "eta", "idbd_nonlinear": "eta", "hypergradient": "hypergradient_lr"}
"""The family with a learned step size, and the name of its meta (hypergradient) rate."""


def _holding_step_size(algo, hp, fields, alpha):
    """State fields with the step-size parameters set so that σ(β) (or α itself) is ``alpha``."""
    fields = dict(fields)
    if algo == "hypergradient":
        fields["alpha"] = alpha
    elif algo == MO and hp.get("sigma") == "identity":
        fields["beta"] = alpha
    else:  # exponential σ: α = e^β
        fields["beta"] = np.log(alpha)
    return fields


@pytest.mark.parametrize("algo", list(META_RATE))
@given(data=st.data(), problem=problems(), steps=horizons(1, 10))
def test_alpha_is_the_step_size_of_the_step(backend, record, algo, data, problem, steps):
    """S_t.alpha is the step size step t was taken with, in every configuration (both orders): the reference's
    step from the backend's S_{t−1} with the step size held at S_t.alpha (meta rate 0) is the backend's Δθ_t;
    S_0.alpha = α₀."""
    hp = data.draw(hyperparameters(CATALOG[algo]), label="hyperparameters")
    theta0 = data.draw(vectors(problem.n), label="theta0")
    ctx = Context(algo, "alpha_is_the_step_size_of_the_step", hp)
    reference_run(algo, hp, problem, theta0, steps)
    mine = _run(backend, algo, hp, problem, theta0, steps)
    held = REFERENCE.algorithms[algo](**CATALOG[algo].materialize({**hp, META_RATE[algo]: 0.0}, REFERENCE))
    expected = []
    for t in range(1, steps + 1):
        s = held.init(mine.thetas[t - 1], **_holding_step_size(algo, hp, mine.states[t - 1], mine.states[t]["alpha"]))
        obs = mine.observations[t - 1]
        expected.append(held.G(held.F(s, obs), obs))
    tol = tolerance(backend.dtype, 0, 4.0)  # one step from a shared state; σ(σ⁻¹(α)) adds an ulp or two
    assert_series_close(mine.deltas, expected, tol=tol, what="Δθ_t at S_t.alpha", ctx=ctx, record=record, first_t=1)
    alpha0 = CATALOG[algo].with_defaults(hp)["alpha0"]
    initial = mine.states[0]["alpha"]
    assert_series_close([initial], [np.full_like(initial, alpha0)], tol=tol, what="S_0.alpha", ctx=ctx, record=record)


# --------------------------------------------------------------------------- structure of the traces


@st.composite
def _configurations(draw, **fixed):
    """Valid metaoptimize hyperparameters from the catalogue's strategy, with some of them fixed."""
    hp = {**draw(hyperparameters(CATALOG[MO]), label="hyperparameters"), **fixed}
    try:
        REFERENCE.algorithms[MO](**hp)
    except ValueError:
        assume(False)
    return hp


def _identity_traces(states, m):
    return [s["Y"] for s in states], [np.vstack([np.eye(m), np.zeros((2 * m, m))])] * len(states)


@pytest.mark.algo(MO)
@given(data=st.data(), problem=problems(), steps=horizons(1, 15))
def test_l_approximation_keeps_y_identity(backend, record, data, problem, steps):
    """Under L (no meta weight decay): Y^β ≡ I, Y^m̄ ≡ Y^v̄ ≡ 0, for every meta."""
    hp = data.draw(_configurations(approximation="L", meta_kappa=0.0))
    theta0 = data.draw(vectors(problem.n), label="theta0")
    ctx = Context(MO, "l_approximation_keeps_y_identity", hp)
    reference_run(MO, hp, problem, theta0, steps)
    mine = _run(backend, MO, hp, problem, theta0, steps)
    actual, expected = _identity_traces(mine.states, mine.states[0]["beta"].shape[0])
    assert_series_close(
        actual, expected, tol=tolerance(backend.dtype, steps), what="Y", ctx=ctx, record=record, scale=1.0
    )


@pytest.mark.algo(MO)
@given(data=st.data(), problem=problems(), steps=horizons(1, 15))
def test_lion_meta_keeps_y_identity(backend, record, data, problem, steps):
    """Lion meta (κ̄ = 0): Y^β ≡ I for every approximation (App. A.1.3)."""
    hp = data.draw(_configurations(meta="lion", meta_kappa=0.0))
    theta0 = data.draw(vectors(problem.n), label="theta0")
    ctx = Context(MO, "lion_meta_keeps_y_identity", hp)
    reference_run(MO, hp, problem, theta0, steps)
    mine = _run(backend, MO, hp, problem, theta0, steps)
    m = mine.states[0]["beta"].shape[0]
    assert_series_close(
        [s["Y"][:m] for s in mine.states],
        [np.eye(m)] * len(mine.states),
        tol=tolerance(backend.dtype, steps),
        what="Y^β",
        ctx=ctx,
        record=record,
        scale=1.0,
    )


@pytest.mark.algo(MO)
@given(data=st.data(), problem=problems(), steps=horizons(1, 20))
def test_hessian_free_2x2_is_l(backend, record, data, problem, steps):
    """Hessian-free 2x2 ≡ Hessian-free L, with or without meta weight decay (spec: a correction)."""
    hp = data.draw(_configurations(approximation="2x2", hessian="free", convention="paper"))
    theta0 = data.draw(vectors(problem.n), label="theta0")
    ctx = Context(MO, "hessian_free_2x2_is_l", hp)
    target = reference_run(MO, {**hp, "approximation": "L"}, problem, theta0, steps)
    _assert_same_runs(
        backend, _run(backend, MO, hp, problem, theta0, steps), target, steps, ctx, record, fields=("beta", "Y", "X")
    )


CLASSICAL_EQUIVALENT = {  # base → (classical algorithm, its hyperparameters) at η = 0, where the conventions coincide
    "sgd": lambda hp: ("sgd", {"lr": hp["alpha0"]}),
    "sgdm": lambda hp: ("momentum", {"lr": hp["alpha0"] * (1 - hp["rho"]), "beta": hp["rho"]}),
    "adamw": lambda hp: (
        "adamw",
        {"lr": hp["alpha0"], "betas": (hp["rho"], hp["lam"]), "eps": hp["eps"], "weight_decay": hp["kappa"]},
    ),
    "rmsprop": lambda hp: ("rmsprop", {"lr": hp["alpha0"], "alpha": hp["lam"], "eps": hp["eps"]}),
    "lion": lambda hp: ("lion", {"lr": hp["alpha0"], "betas": (hp["c"], hp["rho"]), "weight_decay": hp["kappa"]}),
}


@pytest.mark.algo(MO)
@given(data=st.data(), problem=problems(), steps=horizons())
def test_zero_meta_rate_is_the_base(backend, record, data, problem, steps):
    """η = 0, or the fixed meta at any η: β stays σ⁻¹(α₀) and the run is the classical optimizer (torch
    convention) for the paper convention, with κ = 0 for sgdm and rmsprop (torch couples their decay)."""
    hp = CATALOG[MO].with_defaults(data.draw(_configurations(convention="paper", sigma="exponential")))
    if hp["meta"] != "fixed":
        hp["eta"] = 0.0
    if hp["base"] in ("sgdm", "rmsprop", "sgd"):
        hp["kappa"] = 0.0
    theta0 = data.draw(vectors(problem.n), label="theta0")
    algo, classical = CLASSICAL_EQUIVALENT[hp["base"]](hp)
    ctx = Context(MO, "zero_meta_rate_is_the_base", hp)
    target = reference_run(algo, classical, problem, theta0, steps)
    mine = _run(backend, MO, hp, problem, theta0, steps)
    _assert_same_runs(backend, mine, target, steps, ctx, record)
    beta0 = mine.states[0]["beta"]
    assert_holds(all(np.array_equal(s["beta"], beta0) for s in mine.states), "β moved although η = 0", ctx)


@pytest.mark.algo(MO)
@given(data=st.data(), problem=problems())
def test_first_meta_step_is_zero(backend, record, data, problem):
    """H_0 = 0, so z_1 = 0 and the meta direction U is 0: β_1 = (1 − ηκ̄)β_0 (Adam's and RMSprop's 0/0 is
    0 with ε̄ > 0; Lion's sign(0) = 0), and β_1 = β_0 for the fixed meta, which does not decay."""
    hp = data.draw(_configurations())
    theta0 = data.draw(vectors(problem.n), label="theta0")
    ctx = Context(MO, "first_meta_step_is_zero", hp)
    reference_run(MO, hp, problem, theta0, 1)
    mine = _run(backend, MO, hp, problem, theta0, 1)
    full = CATALOG[MO].with_defaults(hp)
    shrink = 1.0 if full["meta"] == "fixed" else 1 - full["eta"] * full["meta_kappa"]
    expected = shrink * mine.states[0]["beta"]
    assert_series_close(
        [mine.states[1]["beta"]], [expected], tol=tolerance(backend.dtype, 0, 1.0), what="β_1", ctx=ctx, record=record
    )


def _normalised_meta_step(hp, before, z, t):
    """(β_t, m̄_t, v̄_t) of the Adam or RMSprop meta from S_{t−1} and z_t, with the moments that already
    include z_t (torch's order; the authors' code's un-normalised sums and ε̄ inside the root for theirs)."""
    eta, rho, lam, eps = hp["eta"], hp["meta_rho"], hp["meta_lam"], hp["meta_eps"]
    m, v = before["meta_m"], before["meta_v"]
    if hp["convention"] == "authors_code":
        m = rho * m + z if hp["meta"] == "adam" else m
        v = lam * v + z * z
        U = (m if hp["meta"] == "adam" else z) / np.sqrt((1 - lam) / (1 - lam**t) * v + eps)
    else:
        m = rho * m + (1 - rho) * z if hp["meta"] == "adam" else m
        v = lam * v + (1 - lam) * z * z
        if hp["meta"] == "adam":
            U = (m / (1 - rho**t)) / (np.sqrt(v / (1 - lam**t)) + eps)
        else:
            U = z / (np.sqrt(v) + eps)
    return (1 - eta * hp["meta_kappa"]) * before["beta"] - eta * U, m, v


@pytest.mark.algo(MO)
@given(data=st.data(), problem=problems(), steps=horizons(2, 12), meta=st.sampled_from(["adam", "rmsprop"]))
def test_adam_meta_uses_the_new_moments(backend, record, data, problem, steps, meta):
    """The Adam and RMSprop metas step with moments that already include z_t = H_{t−1}ᵀg_t (torch's order, the
    authors' code): β_t = (1 − ηκ̄)β_{t−1} − η U(m̄_t, v̄_t), in both conventions. Eq. (28) and Algorithm 3 print
    U(m̄_{t−1}, v̄_{t−1}), which leaves β_2 = (1 − ηκ̄)β_1 (z_1 = 0); the new moments move it (Adam, paper convention,
    ε̄ ≪ |z_2|: by η√(1 + λ̄)/(1 + ρ̄))."""
    hp = CATALOG[MO].with_defaults(data.draw(_configurations(meta=meta)))
    theta0 = data.draw(vectors(problem.n), label="theta0")
    ctx = Context(MO, "adam_meta_uses_the_new_moments", hp)
    reference_run(MO, hp, problem, theta0, steps)
    mine = _run(backend, MO, hp, problem, theta0, steps)
    expected = {"beta": [], "meta_m": [], "meta_v": []}
    for t in range(1, steps + 1):
        before = mine.states[t - 1]
        z = before["X"][: problem.n].T @ mine.observations[t - 1].grad
        for name, value in zip(expected, _normalised_meta_step(hp, before, z, t)):
            expected[name].append(value)
    tol = tolerance(backend.dtype, 0, 4.0)  # one meta step from the backend's own S_{t−1}
    for name, series in expected.items():
        actual = [s[name] for s in mine.states[1:]]
        assert_series_close(actual, series, tol=tol, what=name, ctx=ctx, record=record, first_t=1)


@pytest.mark.algo(MO)
@given(
    problem=problems(),
    alpha0=floats(0.01, 0.5),
    eta=floats(1e-3, 0.05),
    gamma=floats(0.0, 1.0),
    Y=floats(0.5, 1.5),
    data=st.data(),
)
def test_algorithm2_printed_h_update(backend, record, problem, alpha0, eta, gamma, Y, data):
    """One step of algorithm2 (eq. 15) from a state with H_t and Y_t given: H_{t+1} = γ(I − α∇²f)H_t
    − (γY_t + 1 − γ)α∇f, which is Algorithm 2's printed γ(I − α∇²f)H_t − Y_tα∇f plus (1 − γ)(Y_t − 1)α∇f:
    the two agree at γ = 1 or Y_t = 1 only."""
    theta = data.draw(vectors(problem.n), label="theta")
    H = data.draw(vectors(problem.n, scale=0.1), label="H")
    hp = dict(base="sgd", meta="sgd", alpha0=alpha0, eta=eta, gamma=gamma, approximation="2x2", hessian="exact")
    ctx = Context(MO, "algorithm2_printed_h_update", {**hp, "Y": Y})
    optimizer = construct(backend, CATALOG[MO], hp)
    fields = {
        k: np.array(v) if isinstance(v, np.ndarray) else v
        for k, v in state_fields(REFERENCE.algorithms[MO](**hp).init(theta)).items()
    }
    fields["Y"][0, 0], fields["X"][: problem.n, 0] = Y, H
    s = optimizer.init(backend.asarray(theta), **state_to_native(backend, fields))
    f_t = problem.batch(1) if hasattr(problem, "batch") else problem
    obs = native_observation(backend, observe(f_t, theta, optimizer.needs))
    H_next = state_to_host(backend, MO, optimizer.F(s, obs))["X"][: problem.n, 0]
    g, hess_H = f_t.grad(theta), f_t.hvp(theta, H)
    printed = gamma * (H - alpha0 * hess_H) - Y * alpha0 * g
    tol = tolerance(backend.dtype, 0, 4.0)
    assert_series_close(
        [H_next],
        [printed + (1 - gamma) * (Y - 1) * alpha0 * g],
        tol=tol,
        what="H_{t+1} vs (15)",
        ctx=ctx,
        record=record,
        scale=max(np.max(np.abs(printed)), np.max(np.abs(alpha0 * g))),
    )


@pytest.mark.algo(MO)
@given(data=st.data(), problem=problems(), steps=horizons(1, 20))
def test_algorithm3_h_update(backend, record, data, problem, steps):
    """Hessian-free 2x2, κ̄ = 0: H_{t+1} = γ(1 − κα_t)H_t + Δw/(α_t/σ'(β_t)) in column b(j): Δw for σ = exp,
    Δw/α_t for σ = identity (Algorithm 3, spec disambiguation 5)."""
    hp = CATALOG[MO].with_defaults(data.draw(_configurations(approximation="2x2", hessian="free", meta_kappa=0.0)))
    theta0 = data.draw(vectors(problem.n), label="theta0")
    ctx = Context(MO, "algorithm3_h_update", hp)
    reference_run(MO, hp, problem, theta0, steps)
    mine = _run(backend, MO, hp, problem, theta0, steps)
    n = problem.n
    blocks = np.zeros(n, dtype=int) if hp["blocks"] == "scalar" else np.arange(n)
    expected, actual = [], []
    for before, after in zip(mine.states[:-1], mine.states[1:]):
        beta = before["beta"][blocks]
        alpha, dalpha = (np.exp(beta), np.exp(beta)) if hp["sigma"] == "exponential" else (beta, np.ones(n))
        H_next = hp["gamma"] * (1 - hp["kappa"] * alpha)[:, None] * before["X"][:n]
        H_next[np.arange(n), blocks] += after["delta"] * dalpha / alpha
        expected.append(H_next)
        actual.append(after["X"][:n])
    assert_series_close(actual, expected, tol=tolerance(backend.dtype, steps, 4.0), what="H", ctx=ctx, record=record)


# --------------------------------------------------------------------------- the surrogate meta-gradient

FD_TOLERANCE = {"float64": 1e-6, "float32": 1e-2}
"""Relative accuracy of a finite-difference comparison in the backend's precision (h = u^(1/3));
spec/tolerances.md#finite-differences."""


def _assert_reference_surrogate(backend, record, result, ctx):
    """The backend's Hᵀ∇f is the reference's within the policy, κ = 1: the order cases are fixed and well
    conditioned, and the departure measured in float32 is at most 3.2e-7, 1% of the tolerance."""
    tol = tolerance(backend.dtype, ORDER_STEPS)
    record.observe(result.departure, tol)
    assert_holds(
        result.departure <= tol,
        f"the backend's Hᵀ∇f departs from the reference's by {result.departure:.3g} > tol={tol:.3g}",
        ctx,
    )


def _assert_inexact(backend, record, result, ctx, claim: str):
    """An inexactness of the backend's Hᵀ∇f, measured: it is the reference's, and it is off the differences by
    more than 100× their estimated error plus its departure from the reference's, so that the gap is the
    recursion's, not the backend's round-off (the reference's own gap is at least gap − departure)."""
    _assert_reference_surrogate(backend, record, result, ctx)
    assert_holds(
        result.gap > 100 * result.fd_error + result.departure,
        f"{claim} to {result.gap:.3g}: not above 100× the FD error {result.fd_error:.2g} "
        f"+ the departure from the reference's Hᵀ∇f {result.departure:.2g}",
        ctx,
    )


@st.composite
def _surrogate_cases(draw, **fixed):
    hp = draw(_configurations(hessian="exact", blocks="scalar", convention="paper", order="base_first", **fixed))
    problem = draw(problems(n=draw(st.integers(1, 3)), kinds=("quadratic", "logistic")), label="problem")
    hp["alpha0"] = draw(floats(0.01, 0.2), label="alpha0")
    return hp, problem, draw(vectors(problem.n), label="theta0"), draw(horizons(1, 6), label="steps")


def _assert_exact(backend, record, ctx, case):
    hp, problem, theta0, steps = case
    reference_run(MO, hp, problem, theta0, steps)  # rejects a diverging example
    result = surrogate_gap(backend, hp, problem, theta0, steps)
    accuracy = FD_TOLERANCE[backend.dtype]
    assume(result.fd_error <= accuracy / 4)  # the derivative exists numerically here, with room below the accuracy
    record.observe(result.gap, accuracy)
    assert_holds(result.gap <= accuracy, f"Hᵀ∇f is off the finite-difference meta-gradient by {result.gap:.3g}", ctx)


@pytest.mark.algo(MO)
@given(case=_surrogate_cases(eta=0.0))
def test_surrogate_gradient_at_zero_meta_rate(backend, record, case):
    """η = 0, exact Hessian: H_tᵀ∇f_t = Σ_s c_s df_t/dβ_s, c_0 = γ^(t−1), c_s = (1 − γ)γ^(t−1−s), for every
    approximation (the derivative by central differences through the float64 reference's run)."""
    _assert_exact(backend, record, Context(MO, "surrogate_gradient_at_zero_meta_rate", case[0]), case)


@pytest.mark.algo(MO)
@given(case=_surrogate_cases(meta="lion", meta_kappa=0.0), eta=floats(0.0, 0.1))
def test_surrogate_gradient_lion_meta(backend, record, case, eta):
    """Lion meta, any η: exact for every approximation (its step is locally constant in z)."""
    case[0]["eta"] = eta
    _assert_exact(backend, record, Context(MO, "surrogate_gradient_lion_meta", case[0]), case)


ORDER_CASES = [(base, seed) for base in ("sgd", "sgdm") for seed in range(3)]
"""Where the asymptotic orders show at η = 0.05, 0.025: linear bases on a quadratic (n = 3, κ = 5, weight-wise,
ORDER_STEPS steps). Normalised bases (rmsprop, adamw) reach that regime only at much smaller η
(spec/metaoptimize.md)."""
ORDER_STEPS = 8


def _order_case(backend, base, seed, approximation, eta):
    problem = P.random_quadratic(3, condition=5.0, seed=seed)
    theta0 = np.random.default_rng(seed + 100).standard_normal(3)
    hp = dict(
        base=base, meta="sgd", alpha0=0.1, eta=eta, approximation=approximation, hessian="exact", blocks="weightwise"
    )
    return surrogate_gap(backend, hp, problem, theta0, ORDER_STEPS), hp


ORDER_BOUNDS = {
    ("sgd", "full"): 0.35,
    ("sgdm", "full"): 0.7,
    ("sgd", "2x2"): 0.7,
    ("sgdm", "2x2"): 0.7,
    ("sgd", "L"): 0.7,
    ("sgdm", "L"): 0.7,
}
"""Halving η scales the error by ≈ 0.25 for an O(η²) error, ≈ 0.5 for O(η): full is O(η²) only where the h-row
does not read a base-state trace (sgd; sgdm's D_m X^m term is held fixed by eq. (15))."""


@pytest.mark.algo(MO)
@pytest.mark.parametrize("approximation", ["full", "2x2", "L"])
@pytest.mark.parametrize("base, seed", ORDER_CASES)
def test_surrogate_gradient_orders(backend, record, approximation, base, seed):
    """SGD meta: halving η scales the error of the backend's Hᵀ∇f (against central differences through the
    float64 reference's run) by ≤ 0.35 for full with the sgd base (O(η²)) and by ≤ 0.7 otherwise (O(η))."""
    bound = ORDER_BOUNDS[base, approximation]
    big, hp = _order_case(backend, base, seed, approximation, 0.05)
    small, _ = _order_case(backend, base, seed, approximation, 0.025)
    ctx = Context(MO, f"surrogate_gradient_orders[{approximation}]", hp)
    _assert_inexact(backend, record, big, ctx, "the error at η = 0.05 was")
    _assert_reference_surrogate(backend, record, small, ctx)
    ratio = small.gap / big.gap
    record.observe(ratio, bound)
    assert_holds(ratio <= bound, f"halving η scaled the error by {ratio:.3f} > {bound}", ctx)


@pytest.mark.algo(MO)
@pytest.mark.parametrize("base, seed", ORDER_CASES)
def test_surrogate_gradient_full_is_not_exact(backend, record, base, seed):
    """The printed claim, 'exact for full at any η', fails: SGD meta, full, η = 0.05, the backend's Hᵀ∇f, the
    reference's within the policy, is off the derivative (central differences through the float64 reference's
    run) by more than 100× the differences' own error plus its departure from the reference's."""
    result, hp = _order_case(backend, base, seed, "full", 0.05)
    _assert_inexact(backend, record, result, Context(MO, "surrogate_gradient_full_is_not_exact", hp), "full was exact")


# --------------------------------------------------------------------------- robustness (Fig. 2 at toy scale)

ROBUSTNESS_BUDGET_FACTOR = {
    "quadratic": {"float64": 1.5, "float32": None},
    "logistic": {"float64": 10.0, "float32": 10.0},
}
"""spec/convergence.md#metaoptimize: steps allowed, as a multiple of the best fixed step size's, by problem and
precision: about 1.5× the worst ratio measured with the reference in that precision (quadratic 1.01 in float64;
logistic 6.3 in both). On the quadratic the learned α overshoots the stability bound and ‖θ − θ*‖ passes through
5e8–2e13; in float32 that excursion takes `meta_v` to 1e34–1e38, where an overflow (meta step 0 from then on,
α stuck above 2/L, divergence) depends on the run's rounding: None, no float32 statement
(spec/metaoptimize.md#float32)."""


@pytest.mark.algo(MO)
@pytest.mark.parametrize("problem_name", list(ROBUSTNESS_BUDGET_FACTOR))
def test_robust_to_small_initial_step(backend, record, problem_name):
    """From α₀ = 0.01/L, 100× below the best fixed step size 1/L, metaoptimize(sgd, adam, η = 0.03) reaches the
    relative suboptimality 1e-8 from every start within a factor of the steps SGD at 1/L needs (float64
    reference): 1.5 on the quadratic in float64, 10 on logistic regression in both precisions. The quadratic
    is not a float32 case: its excursion takes `meta_v` to the edge of float32's range, where whether it
    overflows depends on rounding (spec/metaoptimize.md#float32)."""
    from .convergence import START_SEEDS, TOLERANCE, problem

    f = problem(problem_name)
    factor = ROBUSTNESS_BUDGET_FACTOR[problem_name][backend.dtype]
    if factor is None:
        pytest.skip(f"{problem_name}: not stated in {backend.dtype} (spec/metaoptimize.md#float32)")
    hp = {"base": "sgd", "meta": "adam", "alpha0": 0.01 / f.smoothness, "eta": 0.03}
    ctx = Context(MO, f"robust_to_small_initial_step[{problem_name}]", hp)
    for seed in START_SEEDS:
        theta0 = np.random.default_rng(seed).standard_normal(f.n)
        best = steps_to_tolerance(_gaps(REFERENCE, "sgd", {"lr": 1 / f.smoothness}, f, theta0, 5000))
        budget = int(np.ceil(factor * best))
        steps = steps_to_tolerance(_gaps(backend, MO, hp, f, theta0, budget))
        assert_holds(
            steps is not None,
            f"start {seed}: not at {TOLERANCE:g} within {budget} steps ({factor}× the best fixed step's {best})",
            ctx,
        )
        record.observe(steps / budget, 1.0)


def _gaps(backend, algo, hp, f, theta0, steps):
    thetas = _run(backend, algo, hp, f, theta0, steps).thetas
    return np.array([f.loss(x) - f.min_value for x in thetas]) / (f.loss(theta0) - f.min_value)


# --------------------------------------------------------------------------- the authors' convention


@pytest.mark.algo(MO)
@given(
    problem=problems(),
    steps=horizons(2, 20),
    eta=floats(0.01, 0.1),
    meta_kappa=floats(0.0, 1.0),
    gamma=st.just(1.0) | floats(0.0, 1.0),
    meta=st.sampled_from(["sgd", "lion"]),
    theta_seed=seeds(),
)
def test_authors_code_keeps_y_identity(backend, record, problem, steps, eta, meta_kappa, gamma, meta, theta_seed):
    """The authors' code carries no Y trace: Y ≡ [I; 0; 0] for any κ̄ and γ, where (15) (Hessian-free) decays
    Y^β' = a(γY^β + 1 − γ), a = 1 − ηκ̄: Y^β_t = Y* + (1 − Y*)(aγ)ᵗ with Y* = a(1 − γ)/(1 − aγ), which is aᵗ only
    at γ = 1; with κ̄ = 0, base sgd and meta lion the two conventions give the same run."""
    theta0 = np.random.default_rng(theta_seed).standard_normal(problem.n)
    hp = dict(base="sgd", meta=meta, alpha0=0.05, eta=eta, meta_kappa=meta_kappa, gamma=gamma)
    ctx = Context(MO, "authors_code_keeps_y_identity", hp)
    paper = reference_run(MO, hp, problem, theta0, steps)
    authors = _run(backend, MO, {**hp, "convention": "authors_code"}, problem, theta0, steps)
    mine = _run(backend, MO, hp, problem, theta0, steps)
    tol = tolerance(backend.dtype, steps)
    actual, expected = _identity_traces(authors.states, 1)
    assert_series_close(actual, expected, tol=tol, what="Y (authors' code)", ctx=ctx, record=record, scale=1.0)
    decayed = [np.ones((1, 1))]
    for _ in range(steps):
        decayed.append((1 - eta * meta_kappa) * (gamma * decayed[-1] + 1 - gamma))
    assert_series_close(
        [s["Y"][:1] for s in mine.states],
        decayed,
        tol=tol,
        what="Y^β (paper)",
        ctx=ctx,
        record=record,
        scale=1.0,
    )
    if meta == "lion" and meta_kappa == 0.0:
        _assert_same_runs(backend, authors, paper, steps, ctx, record)


@pytest.mark.algo(MO)
@given(
    n=dimensions(),
    steps=horizons(1, 10),
    base=st.sampled_from(["adamw", "rmsprop"]),
    meta=st.sampled_from(["adam", "rmsprop"]),
    convention=st.sampled_from(["paper", "authors_code"]),
    data=st.data(),
)
def test_convention_sets_the_epsilons(backend, record, n, steps, base, meta, convention, data):
    """eps and meta_eps left at their default are the convention's: 1e-8 for the paper, HF.py's 1e-10 for the
    authors' code; an explicit value overrides them (gradients of size 1e-7, where ε dominates the normaliser)."""
    grads = [1e-7 * g for g in data.draw(gradient_sequences(n, steps), label="gradients")]
    hp = dict(base=base, meta=meta, alpha0=0.01, eta=0.01, convention=convention)
    ctx = Context(MO, "convention_sets_the_epsilons", hp)
    own, other = (1e-10, 1e-8) if convention == "authors_code" else (1e-8, 1e-10)

    def deltas(**eps):
        return open_loop(backend, MO, construct(backend, CATALOG[MO], {**hp, **eps}), grads, np.zeros(n)).deltas

    default = deltas()
    tol = tolerance(backend.dtype, steps)
    explicit = deltas(eps=own, meta_eps=own)
    assert_series_close(default, explicit, tol=tol, what=f"Δθ with ε = ε̄ = {own:g}", ctx=ctx, record=record, first_t=1)
    overridden = deltas(eps=other, meta_eps=other)
    gap = max(np.max(np.abs(a - b)) for a, b in zip(default, overridden)) / max(np.max(np.abs(d)) for d in default)
    assert_holds(gap > 1e3 * tol, f"ε = ε̄ = {other:g} gave the default's run (gap {gap:.3g})", ctx)
