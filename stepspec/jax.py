"""Runs of the jax backend's algorithms beyond one optimizer: ``sweep`` over hyperparameter settings.

``sweep("lm_rllc", {"c1": c1s, "c2": c2s}, loss_fn, theta0, steps=200, lr=0.05)`` runs the algorithm once
per setting — the i-th setting takes the i-th value of every swept hyperparameter, the others fixed — as
one compiled call: a ``lax.scan`` over the steps inside ``jax.vmap`` over the settings. The hyperparameters
are traced in the jax backend's steps, so every setting shares one program; a setting that would change the
program (a memory size, a variant, weight decay switched on or off) is refused, naming the hyperparameter.
Each setting is checked on the host against the spec's domains before anything runs.

The loss function must be a jax function of the parameters (any pytree). Curvature products, for the
algorithms that need them, come from it by forward-over-reverse differentiation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .backends.jax import ALGORITHMS
from .backends.jax._core import StepInput, as_leaves, precision, traced_products
from .errors import HyperparameterError, StateError


class SweepResult(NamedTuple):
    """What ``sweep`` returns, one row per setting."""

    settings: list[dict]
    """The swept hyperparameters of each setting."""
    losses: np.ndarray
    """(settings, steps + 1): f(θ_0), …, f(θ_T); a diverged run shows inf or NaN from its divergence on."""
    params: Any
    """θ_T of every setting: the parameters' pytree with a leading settings axis on each leaf."""
    compilations: int
    """Programs traced and compiled for the call: 1."""


def _settings(grid: Mapping[str, Sequence]) -> list[dict]:
    sizes = {name: len(values) for name, values in grid.items()}
    if not sizes:
        raise HyperparameterError("grid", "names no hyperparameter to sweep")
    if len(set(sizes.values())) != 1:
        raise HyperparameterError("grid", f"every hyperparameter needs the same number of values, got {sizes}")
    count = next(iter(sizes.values()))
    return [{name: values[i] for name, values in grid.items()} for i in range(count)]


def sweep(
    algo: str,
    grid: Mapping[str, Sequence],
    loss_fn: Callable,
    theta0,
    steps: int,
    *,
    dtype: str = "float64",
    **fixed,
) -> SweepResult:
    """``algo`` run for ``steps`` steps from ``theta0`` on ``loss_fn`` with each setting of ``grid`` (see
    the module's docstring); ``fixed`` are the hyperparameters every setting shares."""
    if algo not in ALGORITHMS:
        raise HyperparameterError("algo", f"the jax backend has no algorithm {algo!r}; it has {sorted(ALGORITHMS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise HyperparameterError("steps", f"must be a non-negative integer, got {steps!r}")
    settings = _settings(grid)
    optimizers = [ALGORITHMS[algo](**fixed, **setting, dtype=dtype) for setting in settings]
    first = optimizers[0]
    for setting, optimizer in zip(settings, optimizers):
        if optimizer.static() != first.static() or optimizer.needs != first.needs:
            changed = [n for n in setting if setting[n] != settings[0][n]]
            raise HyperparameterError(
                changed[0] if changed else "grid",
                f"setting {setting} compiles another program than {settings[0]}: sweep values that change only numbers",
            )
    cls, static, needs = type(first), first.static(), first.needs
    with precision(dtype):
        leaves, structure = as_leaves("theta0", theta0, StateError, dtype)
        theta0 = structure.unflatten(leaves)
        scalars = {name: jnp.stack([optimizer.scalars()[name] for optimizer in optimizers]) for name in first.scalars()}

        traces = []

        def run(scalars):
            traces.append(1)  # runs once per trace: jax.jit compiles what it traces

            def one_step(carry, _):
                tree, params = carry
                loss, grad = jax.value_and_grad(loss_fn)(params)
                step = StepInput(
                    grad,
                    params if "params" in needs else None,
                    loss if "loss" in needs else None,
                    traced_products(loss_fn, params, None, None),
                )
                return cls.pure_step(scalars, static, tree, step, params), loss

            (_, params), losses = jax.lax.scan(one_step, (first.initial_state(structure), theta0), length=steps)
            return params, jnp.append(losses, loss_fn(params))

        params, losses = jax.jit(jax.vmap(run))(scalars)
    return SweepResult(settings, np.asarray(losses), params, len(traces))
