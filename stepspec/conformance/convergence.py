"""The convergence property's problems, configurations and budgets (spec/convergence.md), shared by
the conformance test and `benchmarks/convergence.py`."""

from __future__ import annotations

import functools

import numpy as np

from .. import problems as P
from ..errors import ObservationError
from ..reference import propagators as props
from .catalog import CATALOG
from .harness import construct, run

TOLERANCE = 1e-8
START_SEEDS = (1, 2, 3, 4, 5)


@functools.cache
def problem(name: str):
    if name == "quadratic":
        return P.random_quadratic(20, condition=100.0, seed=0)
    if name == "logistic":
        return P.random_logistic(200, 10, l2=1e-2, seed=0)
    raise KeyError(f"no convergence problem {name!r}")


_M09_M0 = props.propagator("M(0.9) ⊕ M(0)")


def configuration(algo: str, L: float) -> dict:
    """Hyperparameters as a function of the problem's smoothness L."""
    return {
        "sgd": {"lr": 1 / L},
        "momentum": {"lr": 0.5 / L, "beta": 0.9},
        "nag": {"lr": 0.5 / L, "beta": 0.9},
        "adam": {"lr": 0.1},
        "lm_rllc": {"B": _M09_M0.B, "a": _M09_M0.a, "c1": 0.5 / L},
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
}


def relative_suboptimality(backend, algo: str, problem_name: str, seed: int, steps: int) -> np.ndarray:
    """(f(θ_t) − f*)/(f(θ_0) − f*) for t = 0 … steps; Inf from the step where the run diverged (the
    backend then rejects the non-finite gradient, or θ overflows)."""
    f = problem(problem_name)
    theta0 = np.random.default_rng(seed).standard_normal(f.n)
    optimizer = construct(backend, CATALOG[algo], configuration(algo, f.smoothness))
    gaps = np.full(steps + 1, np.inf)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            thetas = run(backend, algo, optimizer, f, theta0, steps).thetas
            values = [f.loss(theta) - f.min_value for theta in thetas]
    except ObservationError:
        return gaps
    gaps[: len(values)] = np.nan_to_num(np.array(values) / (f.loss(theta0) - f.min_value), nan=np.inf)
    return gaps


def steps_to_tolerance(gaps: np.ndarray):
    """The first t with relative suboptimality ≤ TOLERANCE, or None."""
    reached = np.flatnonzero(gaps <= TOLERANCE)
    return int(reached[0]) if reached.size else None
