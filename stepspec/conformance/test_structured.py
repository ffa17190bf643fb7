"""Generic, for backends that declare ``structured = True``: the parameters as a structure of tensors
(spec/conformance.md#structures). A run over several tensors of different shapes — 0-d and empty ones
included — equals the reference's run over their concatenation: every global quantity (a Gram matrix,
an inner product, a norm, a sum per block) is a reduction over all tensors, and every per-parameter
field keeps the concatenation's order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .assertions import Context, assert_series_close
from .catalog import CATALOG
from .harness import (
    construct,
    numeric_fields,
    perturbation_growth,
    reference_run,
    step_sensitivities,
    structured_run,
)
from .strategies import horizons, hyperparameters, parameter_shapes, problems, vectors
from .tolerance import tolerance

ALGORITHMS = list(CATALOG)


@pytest.mark.structured
@pytest.mark.parametrize("algo", ALGORITHMS)
@given(data=st.data())
def test_structured_parameters(backend, record, algo, data):
    info = CATALOG[algo]
    hp = data.draw(hyperparameters(info), label="hyperparameters")
    problem = data.draw(problems(), label="problem")
    theta0 = data.draw(vectors(problem.n), label="theta0")
    shapes = data.draw(parameter_shapes(problem.n), label="shapes")
    ref = reference_run(algo, hp, problem, theta0, data.draw(horizons(), label="steps"))
    steps = len(ref.thetas) - 1
    ctx = Context(algo, "structured_parameters", {**hp, "shapes": shapes})
    mine = structured_run(backend, algo, construct(backend, info, hp), problem, theta0, steps, shapes)
    kappa = max(max(info.step_conditioning(s) for s in ref.states), *step_sensitivities(ref, backend.dtype))
    tol = tolerance(backend.dtype, steps, kappa * perturbation_growth(ref, backend.dtype))
    assert_series_close(mine.thetas, ref.thetas, tol=tol, what="theta", ctx=ctx, record=record)
    for name in numeric_fields(ref.states[0]):
        assert_series_close(
            [s[name] for s in mine.states],
            [s[name] for s in ref.states],
            tol=tol,
            what=f"state.{name}",
            ctx=ctx,
            record=record,
        )
