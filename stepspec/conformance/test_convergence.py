"""Convergence on strongly convex problems (spec/convergence.md): each configuration brings the
relative suboptimality to its problem's tolerance (1e-8; 1e-3 with mini-batch gradients) within its
step budget, from five fixed starting points."""

from __future__ import annotations

import math

import pytest

from .assertions import Context, assert_holds
from .convergence import (
    BUDGETS,
    START_SEEDS,
    configuration,
    relative_suboptimality,
    steps_to_tolerance,
    tolerance,
)


@pytest.mark.parametrize("algo, problem_name", list(BUDGETS))
def test_convergence(backend, record, algo, problem_name):
    budget = BUDGETS[algo, problem_name]
    ctx = Context(algo, f"convergence[{problem_name}]", configuration(algo, problem_name))
    target = tolerance(problem_name)
    for seed in START_SEEDS:
        steps = steps_to_tolerance(relative_suboptimality(backend, algo, problem_name, seed, budget), target)
        record.observe(math.inf if steps is None else steps / budget, 1.0)  # the fraction of the budget used
        assert_holds(
            steps is not None,
            f"start seed {seed}: relative suboptimality above {target:g} after {budget} steps on {problem_name}",
            ctx,
        )
