"""The classical reference, and TO's momentum special case, against torch.optim in float64
(spec/classical.md, spec/trainable_optimizer.md, spec/tolerances.md). Runs where torch is installed
(pip install torch==2.13.0)."""

from __future__ import annotations

import numpy as np
import pytest

from stepspec import problems as P
from stepspec import reference
from stepspec.conformance.tolerance import deviation, series_scale, tolerance
from stepspec.reference.rllc import relaxed_pinv

torch = pytest.importorskip("torch")

STEPS = 20
PROBLEM = P.random_quadratic(6, condition=4.0, seed=3)
THETA0 = np.random.default_rng(5).standard_normal(6)
BOUND = tolerance("float64", STEPS, PROBLEM.condition_number)

CASES = [
    ("sgd", {"lr": 0.3}, torch.optim.SGD, {"lr": 0.3}),
    ("momentum", {"lr": 0.3, "beta": 0.9}, torch.optim.SGD, {"lr": 0.3, "momentum": 0.9}),
    ("nag", {"lr": 0.3, "beta": 0.9}, torch.optim.SGD, {"lr": 0.3, "momentum": 0.9, "nesterov": True}),
    ("adam", {"lr": 0.05, "weight_decay": 0.1}, torch.optim.Adam, {"lr": 0.05, "weight_decay": 0.1}),
    ("adamw", {"lr": 0.05}, torch.optim.AdamW, {"lr": 0.05}),
    ("rmsprop", {"lr": 0.01, "weight_decay": 0.1}, torch.optim.RMSprop, {"lr": 0.01, "weight_decay": 0.1}),
    # TO with a zero linear part and η^b = 1 − β is SGD with lr = α(1 − β), momentum β: α = 3, β = 0.9
    ("trainable_optimizer", {"lr": 3.0, "lr_A": 0.0, "lr_b": 0.1}, torch.optim.SGD, {"lr": 0.3, "momentum": 0.9}),
    ("diagonal_to", {"lr": 3.0, "lr_a": 0.0, "lr_b": 0.1}, torch.optim.SGD, {"lr": 0.3, "momentum": 0.9}),
    ("rank_one_to", {"lr": 3.0, "lr_uv": 0.0, "lr_b": 0.1}, torch.optim.SGD, {"lr": 0.3, "momentum": 0.9}),
]


def torch_trajectory(optimizer_class, kwargs):
    theta = torch.tensor(THETA0, dtype=torch.float64, requires_grad=True)
    optimizer = optimizer_class([theta], **kwargs)
    trajectory = [THETA0.copy()]
    for _ in range(STEPS):
        optimizer.zero_grad()
        theta.grad = torch.tensor(PROBLEM.grad(theta.detach().numpy()), dtype=torch.float64)
        optimizer.step()
        trajectory.append(theta.detach().numpy().copy())
    return trajectory


def test_the_policy_bound_is_within_the_acceptance_figure():
    assert BOUND <= 1e-12  # the foundation and TO issues ask for 1e-12 relative; the policy gives 6.0e-13 here


@pytest.mark.parametrize("algo, ours, optimizer_class, theirs", CASES, ids=[c[0] for c in CASES])
def test_matches_torch(algo, ours, optimizer_class, theirs):
    expected = torch_trajectory(optimizer_class, theirs)
    actual = list(reference.run(reference.ALGORITHMS[algo](**ours), PROBLEM, THETA0, STEPS))
    scale = series_scale(expected)
    worst = max(deviation(a, e, scale)[0] for a, e in zip(actual, expected))
    assert worst <= BOUND, f"{algo}: relative deviation {worst:.3g} from torch.optim exceeds {BOUND:.3g}"


def _torch_relaxed_pinv(M: np.ndarray, eps: float, cut: bool) -> np.ndarray:
    """(R3b) with torch's SVD, with or without the round-off cut-off (R3c)."""
    U, sigma, Vt = (x.numpy() for x in torch.linalg.svd(torch.from_numpy(M), full_matrices=False))
    coefficients = sigma / (sigma * sigma + eps)
    if cut:
        coefficients[sigma <= max(M.shape) * np.finfo(M.dtype).eps * sigma.max()] = 0.0
    return (Vt.T * coefficients) @ U.T


def test_relaxed_inverse_is_a_function_of_the_memory_not_of_the_svd_routine():
    """spec/rllc.md (R3c): M_1 = g aᵀ is rank 1; numpy's and torch's float64 SVDs give it different round-off
    singular values, which ε > 0 (the default 1e-8) would amplify by 1/ε. With the cut-off two float64
    implementations agree to round-off; without it they differ by about 1e-7 relative."""
    rng = np.random.default_rng(0)
    M, g = np.outer(rng.standard_normal(6), [1.0, 1.0]), rng.standard_normal(6)
    ours = relaxed_pinv(M, 1e-8) @ g
    scale = series_scale(ours)
    assert deviation(_torch_relaxed_pinv(M, 1e-8, cut=True) @ g, ours, scale)[0] <= tolerance("float64")
    assert deviation(_torch_relaxed_pinv(M, 1e-8, cut=False) @ g, ours, scale)[0] > 1e-9
