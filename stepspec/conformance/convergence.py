"""The convergence property's problems, configurations and budgets (spec/convergence.md), shared by
the conformance test and `benchmarks/convergence.py`."""

from __future__ import annotations

import functools

import numpy as np

from .. import problems as P
from ..errors import ObservationError
from ..reference import propagators as props
from .assertions import ConformanceFailure
from .catalog import CATALOG
from .harness import construct, run

TOLERANCE = 1e-8
MINIBATCH_TOLERANCE = 1e-3  # the gradient noise of a mini-batch run sets a floor well above round-off
START_SEEDS = (1, 2, 3, 4, 5)


@functools.cache
def problem(name: str):
    if name == "quadratic":
        return P.random_quadratic(20, condition=100.0, seed=0)
    if name == "logistic":
        return P.random_logistic(200, 10, l2=1e-2, seed=0)
    if name == "minibatch_logistic":
        return P.MiniBatch(problem("logistic"), batch_size=20, seed=0)
    raise KeyError(f"no convergence problem {name!r}")


def tolerance(problem_name: str) -> float:
    """The relative suboptimality a run must reach on ``problem_name``."""
    return MINIBATCH_TOLERANCE if problem_name.startswith("minibatch") else TOLERANCE


_M09_M0 = props.propagator("M(0.9) ⊕ M(0)")


def configuration(algo: str, problem_name: str) -> dict:
    """Hyperparameters as a function of the problem: its smoothness L and, for TO, the scale
    1 + ‖x*‖² of the approximation step's curvature ‖x‖² + 1 near the optimum
    (spec/trainable_optimizer.md#step-size-bound)."""
    f = problem(problem_name)
    L, curvature = f.smoothness, 1 + float(np.sum(f.minimizer**2))
    decay = 0.997 if problem_name.startswith("minibatch") else 1.0  # a decaying α beats the gradient noise
    to = {"lr": 1 / L, "lr_b": 0.1, "lr_decay": decay}
    return {
        "sgd": {"lr": 1 / L},
        "momentum": {"lr": 0.5 / L, "beta": 0.9},
        "nag": {"lr": 0.5 / L, "beta": 0.9},
        "adam": {"lr": 0.1},
        "lm_rllc": {"B": _M09_M0.B, "a": _M09_M0.a, "c1": 0.5 / L},
        "trainable_optimizer": {**to, "lr_A": 0.1 / curvature},
        "diagonal_to": {**to, "lr_a": 0.1 / curvature},
        "rank_one_to": {**to, "lr_uv": 0.1 / curvature},
        "elra": {},  # the paper's defaults: nothing to tune (spec/elra.md)
        "elra_lean": {},
    }[algo]


BUDGETS = {  # (algorithm, problem): steps, 1.5× the reference's worst count over START_SEEDS
    ("sgd", "quadratic"): 1000,
    ("momentum", "quadratic"): 270,
    ("nag", "quadratic"): 230,
    ("adam", "quadratic"): 4000,
    ("lm_rllc", "quadratic"): 650,
    ("sgd", "logistic"): 70,
    ("momentum", "logistic"): 260,
    ("nag", "logistic"): 120,
    ("adam", "logistic"): 260,
    ("lm_rllc", "logistic"): 150,
    ("trainable_optimizer", "quadratic"): 947,
    ("trainable_optimizer", "logistic"): 117,
    ("trainable_optimizer", "minibatch_logistic"): 630,
    ("diagonal_to", "quadratic"): 908,
    ("diagonal_to", "logistic"): 207,
    ("diagonal_to", "minibatch_logistic"): 1548,
    ("rank_one_to", "quadratic"): 891,
    ("rank_one_to", "logistic"): 177,
    ("rank_one_to", "minibatch_logistic"): 1547,
    ("elra", "quadratic"): 480,
    ("elra", "logistic"): 26,
    ("elra_lean", "quadratic"): 488,
    ("elra_lean", "logistic"): 26,
}


def relative_suboptimality(
    backend, algo: str, problem_name: str, seed: int, steps: int, hyperparameters: dict | None = None
) -> np.ndarray:
    """(f(θ_t) − f*)/(f(θ_0) − f*) for t = 0 … steps; Inf throughout if the run diverged (the backend
    then rejects the non-finite gradient) and from the step where θ overflowed. ``hyperparameters``
    default to ``configuration(algo, problem_name)``."""
    f = problem(problem_name)
    theta0 = np.random.default_rng(seed).standard_normal(f.n)
    if hyperparameters is None:
        hyperparameters = configuration(algo, problem_name)
    optimizer = construct(backend, CATALOG[algo], hyperparameters)
    gaps = np.full(steps + 1, np.inf)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            thetas = run(backend, algo, optimizer, f, theta0, steps).thetas
            values = [f.loss(theta) - f.min_value for theta in thetas]
    except ConformanceFailure as failure:  # the backend rejected the non-finite gradient of a diverged run
        if not isinstance(failure.__cause__, ObservationError):
            raise
        return gaps
    gaps[: len(values)] = np.nan_to_num(np.array(values) / (f.loss(theta0) - f.min_value), nan=np.inf)
    return gaps


def steps_to_tolerance(gaps: np.ndarray, tolerance: float = TOLERANCE):
    """The first t with relative suboptimality ≤ ``tolerance``, or None."""
    reached = np.flatnonzero(gaps <= tolerance)
    return int(reached[0]) if reached.size else None
