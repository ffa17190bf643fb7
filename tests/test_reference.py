"""Reference details that are not conformance properties: the contract's edges, the relaxed inverse's
two forms, the unit-gain default, the immutability of states, TO's warning, memory limit and defaults."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from stepspec import Observation, StateError, iterate, problems, run
from stepspec.errors import DivergenceError, StepSizeWarning
from stepspec.reference import (
    adam,
    diagonal_to,
    lm_rllc,
    propagator,
    rank_one_to,
    relaxed_pinv,
    sgd,
    trainable_optimizer,
)


def test_run_shapes_and_bad_steps():
    f = problems.random_quadratic(3)
    assert run(sgd(0.1), f, np.zeros(3), 4).shape == (5, 3)
    with pytest.raises(ValueError, match="steps"):
        run(sgd(0.1), f, np.zeros(3), -1)


@pytest.mark.parametrize(
    "optimizer, theta0, param, step",
    [
        # θ_t = (−19)^t on the curvature-2 axis: the gradient 2θ_{t−1} overflows once 19^(t−1) > max/2, t = 242
        (sgd(lr=10.0), np.ones(2), "grad", 1 + math.ceil(math.log(np.finfo(float).max / 2) / math.log(19))),
        (sgd(lr=1e300), np.array([1e10, 0.0]), "theta", 1),  # the step −1e300·g overflows
        (adam(lr=0.1), np.array([1e200, 0.0]), "v", 1),  # g² overflows in the state; θ_1 stays finite
    ],
)
def test_run_reports_divergence_at_its_step(optimizer, theta0, param, step):
    """spec/formalism.md#running: a run that leaves the finite numbers raises DivergenceError naming the
    quantity and the step, before any overflow warning (RuntimeWarning is an error here)."""
    f = problems.quadratic(np.diag([1.0, 2.0]), np.zeros(2))
    with pytest.raises(DivergenceError) as error:
        run(optimizer, f, theta0, 500)
    assert (error.value.param, error.value.step) == (param, step)
    assert f"diverged at step {step}" in str(error.value)


def test_iterate_uses_the_batch_of_each_step():
    stochastic = problems.MiniBatch(problems.random_logistic(20, 2, seed=1), batch_size=3, seed=4)
    steps = list(iterate(sgd(1.0), stochastic, np.zeros(2), 2))
    assert np.allclose(steps[1][1], -stochastic.batch(1).grad(np.zeros(2)))


def test_states_are_read_only_values():
    opt = adam(0.1)
    s0 = opt.init(np.zeros(2))
    s1 = opt.F(s0, Observation(np.ones(2)))
    with pytest.raises(ValueError):
        s1.m[0] = 5.0
    assert s0.step == 0 and np.all(s0.m == 0), "F returned a new state; the old one is unchanged"


def test_adam_G_needs_a_step():
    opt = adam()
    with pytest.raises(StateError) as error:
        opt.G(opt.init(np.zeros(2)), Observation(np.ones(2)))
    assert error.value.param == "step"


def test_weight_decay_needs_params():
    assert adam(weight_decay=0.1).needs == {"grad", "params"} and adam().needs == {"grad"}


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4)])
def test_relaxed_inverse_forms(shape):
    """(R3a) is numpy's pinv; (R3b) in the SVD basis is the printed Tikhonov (MᵀM + εI)⁻¹Mᵀ."""
    M = np.random.default_rng(0).standard_normal(shape)
    assert np.allclose(relaxed_pinv(M, 0.0), np.linalg.pinv(M), rtol=1e-12, atol=1e-12)
    eps = 0.3
    tikhonov = np.linalg.solve(M.T @ M + eps * np.eye(shape[1]), M.T)
    assert np.allclose(relaxed_pinv(M, eps), tikhonov, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("notation", ["M(0.9) ⊕ M(0)", "M(0.9) ⊕ M2(0.6)", "M(0.9) ⊕ M(−0.9) ⊕ CM(0.9i)"])
def test_unit_gain_default_moves_like_sgd_in_steady_state(notation):
    """spec/rllc.md#lm_rllc: under a constant gradient, with the law frozen (c2 = 0), the default L0
    makes the step tend to −c1·g."""
    c1, g = 0.01, np.array([1.0, -2.0, 0.5])
    opt = lm_rllc(*propagator(notation), c1=c1, c2=0.0)
    s = opt.init(np.zeros(3))
    for _ in range(400):
        s = opt.F(s, Observation(g))
    assert np.allclose(opt.G(s, Observation(g)), -c1 * g, rtol=1e-12)


def test_full_approximation_refuses_a_problem_without_third_order_information():
    from stepspec import ObservationError
    from stepspec.reference import metaoptimize

    class NoThird:
        n = 2
        grad = staticmethod(lambda theta: theta)
        hvp = staticmethod(lambda theta, v: v)

    optimizer = metaoptimize("sgd", "sgd", 0.1, approximation="full", hessian="exact")
    with pytest.raises(ObservationError) as error:
        run(optimizer, NoThird(), np.ones(2), 3)
    assert error.value.param == "third" and "NoThird has no third method" in str(error.value)


# --------------------------------------------------------------------------- trainable optimizer


def test_to_warns_once_when_the_variable_step_amplifies_the_residual():
    """c = η^A‖x‖² + η^b ≥ 2 warns (spec/trainable_optimizer.md#step-size-bound); c < 2 does not."""
    x, g = np.array([3.0, 0.0]), np.array([1.0, 1.0])
    obs = Observation(grad=g, params=x)
    quiet = trainable_optimizer(lr=0.1, lr_A=0.1, lr_b=0.5)  # c = 0.9 + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", StepSizeWarning)
        quiet.F(quiet.init(x), obs)
    loud = trainable_optimizer(lr=0.1, lr_A=0.2, lr_b=0.5)  # c = 1.8 + 0.5
    with pytest.warns(StepSizeWarning, match="c ≥ 2"):
        loud.F(loud.init(x), obs)
    diagonal = diagonal_to(lr=0.1, lr_a=0.2, lr_b=0.5)  # c_i = 0.2·9 + 0.5 at the largest x_i²
    with pytest.warns(StepSizeWarning):
        diagonal.F(diagonal.init(x), obs)


def test_full_to_memory_limit_names_the_limit_and_the_alternatives():
    with pytest.raises(StateError) as error:
        trainable_optimizer(lr=0.1, lr_A=0.0, max_memory=1e6).init(np.zeros(400))  # (400² + 400)·8 > 1e6
    assert error.value.param == "theta0"
    assert "max_memory" in str(error.value) and "diagonal_to" in str(error.value) and "rank_one_to" in str(error.value)
    assert trainable_optimizer(lr=0.1, lr_A=0.0, max_memory=1e6).init(np.zeros(300)).A.shape == (300, 300)


def test_full_to_default_memory_limit_is_n_11584():
    """spec/trainable_optimizer.md (memory limit): the default 2³⁰ bytes admit n = 11 584, (n² + n)·8 =
    1 073 605 120, and refuse n = 11 585 (1 073 790 480); the limit itself is inclusive, checked at n = 300
    so that nothing large is allocated."""
    default = trainable_optimizer(lr=0.1, lr_A=0.0)
    assert default.max_memory == 2**30 >= (11584**2 + 11584) * 8
    with pytest.raises(StateError, match="1,073,790,480 bytes"):
        default.init(np.zeros(11585))
    exact = (300**2 + 300) * 8
    assert trainable_optimizer(lr=0.1, lr_A=0.0, max_memory=exact).init(np.zeros(300)).A.shape == (300, 300)
    with pytest.raises(StateError):
        trainable_optimizer(lr=0.1, lr_A=0.0, max_memory=exact - 1).init(np.zeros(300))


def test_to_defaults():
    """lr_b defaults to the linear part's rate; RankOne starts at u = 0, v = 1/√n; no projection."""
    assert trainable_optimizer(lr=0.1, lr_A=0.03).lr_b == 0.03
    assert diagonal_to(lr=0.1, lr_a=0.03).lr_b == 0.03
    s = rank_one_to(lr=0.1, lr_uv=0.03).init(np.zeros(4))
    assert np.all(s.u == 0) and np.allclose(s.v, 0.5) and rank_one_to(lr=0.1, lr_uv=0.0).radius is None


def test_to_projection_accepts_a_start_outside_the_ball():
    """θ₀ need not lie in X; θ₁ does (spec/trainable_optimizer.md#projection-sec-32)."""
    f = problems.random_quadratic(3, seed=2)
    thetas = run(diagonal_to(lr=0.5, lr_a=0.01, lr_b=0.5, radius=1.0, center=np.ones(3)), f, 10 * np.ones(3), 5)
    distances = np.linalg.norm(thetas - 1.0, axis=1)
    assert distances[0] > 1 and np.all(distances[1:] <= 1 + 1e-12)


def test_elra_cascade_oracle():
    """The suite's Sec. 3.3 oracle: six triggered updates from m_0 = 4 are ×1.5, ×1.5, ÷1.5, ×1.5, ×1.5,
    ÷1.5 on the exact multiple, rounded half up: 6, 9, 6, 9, 14, 9; from m_0 = 1 it never drops below 1."""
    from stepspec.conformance.test_elra import expected_multiples

    assert expected_multiples([1.0] * 6, [1.0] * 6, 4) == [6, 9, 6, 9, 14, 9]
    assert expected_multiples([1.0] * 3, [1.0] * 3, 1) == [2, 2, 2]
    from stepspec.reference import elra

    assert elra(batch_control=True, initial_multiple=4).multiple_after(5) == 14


def test_elra_error_damper_follows_the_authors_code():
    """spec/elra.md#error-damper: the January-2024 code tests E < 5·10⁵ before multiplying by 16. From the
    pinned Rosenbrock start the rise lifts E past 5·10⁵, and the last pinned retrace happens only because of
    it: min(16E, 5·10⁵), the rule this reference had before, gives a threshold above that step's loss."""
    from stepspec.conformance.elra_experiments import ERROR_DAMPER_RETRACES, ERROR_DAMPER_RISE, ERROR_DAMPER_START
    from stepspec.reference import elra

    ceiling, rosenbrock, t = 5e5, problems.Rosenbrock(), ERROR_DAMPER_RETRACES[-1]
    trajectory = list(iterate(elra(convention="authors_code"), rosenbrock, ERROR_DAMPER_START, t))
    thetas, states = [theta for _, theta, _ in trajectory], [s for _, _, s in trajectory]
    below = states[ERROR_DAMPER_RISE - 1].error_damper
    assert below < ceiling < states[ERROR_DAMPER_RISE].error_damper == 16 * below
    # from the rise on both rules shrink E by the same factors: the capped E is the code's scaled down
    code, capped = states[t - 1].error_damper, states[t - 1].error_damper * ceiling / (16 * below)
    best = states[t - 1].relaxed_best

    def threshold(error_damper):  # retrace unless f < 1.1 τ T (spec/elra.md#authors-code)
        return 1.1 * best * (25 + (2500 + 71 * np.sqrt(best)) / (1 + np.sqrt(error_damper)))

    loss = rosenbrock.loss(thetas[t - 1])  # step t observes f at θ_{t−1}
    assert states[t].retraced and threshold(code) < loss < threshold(capped)
