"""stepspec.problems: exact derivatives (against central differences), minimisers, replayable batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepspec import problems as P

PROBLEMS = {
    "quadratic": lambda seed: P.random_quadratic(5, condition=50.0, seed=seed),
    "least_squares": lambda seed: P.random_least_squares(12, 4, seed=seed),
    "logistic": lambda seed: P.random_logistic(30, 4, l2=0.05, seed=seed),
    "rosenbrock": lambda seed: P.Rosenbrock(4),
    "rosenbrock_2d": lambda seed: P.Rosenbrock(2, a=2.0, b=10.0),
    "saddle": lambda seed: P.Saddle(),
    "minibatch": lambda seed: P.MiniBatch(P.random_logistic(30, 4, seed=seed), 7, seed=seed).batch(3),
    "softmax": lambda seed: P.Softmax(np.random.default_rng(seed).standard_normal((25, 3)), np.arange(25) % 4, l2=0.05),
}


@pytest.mark.parametrize("name", PROBLEMS)
@settings(max_examples=20, derandomize=True, deadline=None)
@given(seed=st.integers(0, 1000))
def test_gradient_and_hvp_match_central_differences(name, seed):
    f = PROBLEMS[name](seed)
    rng = np.random.default_rng(seed)
    theta, v, h = rng.standard_normal(f.n), rng.standard_normal(f.n), 1e-5
    fd_grad = np.array([(f.loss(theta + h * e) - f.loss(theta - h * e)) / (2 * h) for e in np.eye(f.n)])
    fd_hvp = (f.grad(theta + h * v) - f.grad(theta - h * v)) / (2 * h)
    assert np.allclose(f.grad(theta), fd_grad, rtol=1e-6, atol=1e-6 * np.abs(fd_grad).max())
    assert np.allclose(f.hvp(theta, v), fd_hvp, rtol=1e-6, atol=1e-6 * np.abs(fd_hvp).max())


@pytest.mark.parametrize("name", ["quadratic", "least_squares", "logistic", "rosenbrock", "rosenbrock_2d"])
def test_minimizer_is_stationary(name):
    f = PROBLEMS[name](0)
    assert np.linalg.norm(f.grad(f.minimizer)) < 1e-10
    assert f.min_value == pytest.approx(f.loss(f.minimizer))


def test_random_quadratic_has_the_requested_spectrum():
    f = P.random_quadratic(8, condition=1e3, seed=1)
    assert f.smoothness == pytest.approx(1.0) and f.strong_convexity == pytest.approx(1e-3)
    assert f.condition_number == pytest.approx(1e3)


def test_minibatches_replay_and_differ():
    stochastic = P.MiniBatch(P.random_logistic(40, 3, seed=2), batch_size=5, seed=9)
    assert np.array_equal(stochastic.batch(4).X, stochastic.batch(4).X)
    assert not np.array_equal(stochastic.batch(4).X, stochastic.batch(5).X)
    assert stochastic.min_value == stochastic.full.min_value


def test_saddle_is_unbounded():
    assert P.Saddle().minimizer is None and P.Saddle().loss([0.0, 3.0]) == -9.0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: P.quadratic(np.ones((2, 3)), np.ones(2)), "square"),
        (lambda: P.quadratic(np.array([[1.0, 2.0], [0.0, 1.0]]), np.ones(2)), "symmetric"),
        (lambda: P.logistic(np.ones((3, 2)), np.array([1.0, 0.0, 1.0]), 0.1), "−1 or \\+1"),
        (lambda: P.MiniBatch(P.random_logistic(5, 2), batch_size=6), "batch_size"),
        (lambda: P.Rosenbrock(1), "n ≥ 2"),
        (lambda: P.random_quadratic(3).grad(np.ones(4)), "shape"),
    ],
)
def test_bad_problem_input(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("name", PROBLEMS)
def test_third_derivative_matches_central_differences_of_hvp(name):
    f = PROBLEMS[name](3)
    rng = np.random.default_rng(4)
    theta, u, v, h = rng.standard_normal(f.n), rng.standard_normal(f.n), rng.standard_normal(f.n), 1e-5
    fd = (f.hvp(theta + h * v, u) - f.hvp(theta - h * v, u)) / (2 * h)
    assert np.allclose(f.third(theta, u, v), fd, rtol=1e-6, atol=1e-6 * max(np.abs(fd).max(), 1e-12))
    assert np.allclose(f.third(theta, u, v), f.third(theta, v, u), rtol=1e-12, atol=1e-12)  # symmetric


def test_sutton_task_follows_the_protocol():
    task = P.SuttonTask(n=20, relevant=5, flip_every=20, seed=1)
    f = task.batch(7)
    assert f.X.shape == (1, 20) and f.y[0] == pytest.approx(task.signs(7) @ f.X[0, :5])
    flips = [int(np.sum(task.signs(t) != task.signs(t - 1))) for t in range(1, 200)]
    assert flips == [1 if t % 20 == 0 else 0 for t in range(1, 200)]  # one sign every 20 examples
    assert np.array_equal(P.SuttonTask(seed=1).batch(55).X, task.batch(55).X)  # replayable


def test_shuffled_epochs_visit_every_sample_once_per_epoch():
    f = P.Softmax(np.arange(20.0).reshape(10, 2), np.arange(10) % 3, l2=0.1)
    epochs = P.ShuffledEpochs(f, batch_size=4, seed=7)
    assert epochs.steps_per_epoch == 3
    for epoch in range(2):
        rows = np.concatenate([epochs.batch(epoch * 3 + i + 1).X[:, 0] for i in range(3)])
        assert sorted(rows) == list(np.arange(0.0, 20.0, 2.0)), "a permutation of the samples"
    assert not np.array_equal(epochs.batch(1).X, epochs.batch(4).X), "each epoch is shuffled anew"
    assert epochs.batch(3).m == 2, "the last batch of an epoch holds the remainder"
