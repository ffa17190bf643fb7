"""stepspec's algorithms as optax transformations (spec/backends.md#optax), over the jax backend's pure steps.

``stepspec.optax.<algorithm>(...)`` takes the spec's hyperparameters (the jax backend's constructor, the same
names, domains and defaults) and returns an ``optax.GradientTransformationExtraArgs``::

    opt = stepspec.optax.lm_rllc(lr=0.1, c1=0.5, c2=0.5)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params, value=loss, value_fn=loss_fn)
    params = optax.apply_updates(params, updates)

``update(updates, state, params, *, value=None, value_fn=None, hvp_fn=None, third_fn=None)`` follows optax's
line-search transformations: ``updates`` are the gradients (after whatever the chain did before), ``value``
the loss at ``params`` and ``value_fn`` the loss as a function of the parameters; an algorithm that needs
∇²f v (IDBD, MetaOptimize's Hessian approximations) or ∇³f[u, v] gets them from ``value_fn`` by forward-over-
reverse differentiation, or from ``hvp_fn(v)`` / ``third_fn(u, v)`` when given. The updates returned are the
spec's G, the increment θ_t − θ_{t−1} itself (optax's sign convention: ``apply_updates`` adds them).

State: ``StepspecState(inner, skipped, total_skipped)``, a NamedTuple whose ``inner`` is the algorithm's state
tree (NamedTuples of arrays), so it checkpoints with any pytree checkpointer and a restored state continues
the trajectory bit for bit.

Inside ``jax.jit`` nothing can raise on values, so a step whose input or result is not finite — a NaN or
infinite gradient, loss or curvature product, or a step that would make the state or the update non-finite
(a singular memory the host would have refused) — is skipped: the state is kept, the update is zero, and
``skipped`` (consecutive) and ``total_skipped`` count it, as ``optax.apply_if_finite`` does. A NaN never
reaches the parameters. Hyperparameters are checked when the transformation is built, on the host.

Hyperparameters that change no program (a learning rate, β, LM-RLLC's c1 and c2, MetaOptimize's η) can be
injected: ``optax.inject_hyperparams(stepspec.optax.adam)(lr=schedule)``. A traced value cannot be checked; it
is used as given (its domain is checked whenever the value is concrete, as in ``init``).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .backends.jax import ALGORITHMS
from .backends.jax._core import Optimizer, StepInput, Structure, traced_products


class StepspecState(NamedTuple):
    """The optax state of a stepspec transformation."""

    inner: Any
    """The algorithm's state tree (its spec fields, see the jax backend's ``layouts``)."""
    skipped: jax.Array
    """Consecutive steps skipped for a non-finite input or result."""
    total_skipped: jax.Array
    """Steps skipped since ``init``."""


def _dtype_name(leaves) -> str:
    return "float64" if leaves and leaves[0].dtype == jnp.float64 else "float32"


def _structure(params) -> Structure:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return Structure(treedef, tuple(tuple(leaf.shape) for leaf in leaves), _dtype_name(leaves))


def _all_finite(*trees) -> jax.Array:
    """Whether every entry is finite, decided from one sum per leaf: a NaN or an infinity makes the sum
    non-finite, and a sum that overflows while every entry is finite (beyond float32's 3e38) skips a step
    that is a step too far anyway. A sum streams the leaf once where ``all(isfinite(…))`` is a pass of its own
    beside the update on XLA:CPU."""
    sums = [
        jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(trees) if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    return jnp.isfinite(sum(sums)) if sums else jnp.asarray(True)


def transformation(optimizer: Optimizer) -> optax.GradientTransformationExtraArgs:
    """``optimizer`` (a jax backend optimizer) as an optax transformation; see the module's docstring."""
    cls, static, needs = type(optimizer), optimizer.static(), optimizer.needs

    def init(params):
        return StepspecState(
            inner=optimizer.initial_state(_structure(params)),
            skipped=jnp.zeros((), jnp.int32),
            total_skipped=jnp.zeros((), jnp.int32),
        )

    def update(updates, state, params=None, *, value=None, value_fn=None, hvp_fn=None, third_fn=None, **extra):
        del extra  # other members of a chain may need them
        for name, given in (("params", params), ("loss", value)):
            if name in needs and given is None:
                raise ValueError(
                    f"stepspec.optax.{optimizer.algo} needs `{'value' if name == 'loss' else name}` in update()"
                )
        if {"hvp", "third"} & needs and value_fn is None and hvp_fn is None:
            raise ValueError(f"stepspec.optax.{optimizer.algo} needs `value_fn` (or `hvp_fn`) in update()")
        leaves = jax.tree_util.tree_leaves(updates)
        dtype = leaves[0].dtype if leaves else jnp.float32
        # the hyperparameters in the gradients' precision, from their values (not from a rounded copy)
        in_precision = copy.copy(optimizer)
        in_precision.dtype = _dtype_name(leaves)
        scalars = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), in_precision.scalars())
        loss = None if value is None or "loss" not in needs else jnp.asarray(value, dtype)
        step = StepInput(
            updates,
            params if "params" in needs else None,
            loss,
            traced_products(value_fn, params, hvp_fn, third_fn),
        )
        inner = cls.step_F(scalars, static, state.inner, step)
        delta = cls.step_G(scalars, static, inner, step)
        ok = _all_finite(updates, loss, inner, delta) & cls.step_ok(state.inner, inner)
        inner = jax.tree_util.tree_map(lambda new, old: jnp.where(ok, new, old), inner, state.inner)
        delta = jax.tree_util.tree_map(lambda d: jnp.where(ok, d, jnp.zeros_like(d)), delta)
        skipped = jnp.where(ok, 0, optax.safe_increment(state.skipped))
        total = jnp.where(ok, state.total_skipped, optax.safe_increment(state.total_skipped))
        return delta, StepspecState(inner, skipped, total)

    return optax.GradientTransformationExtraArgs(init, update)


def _concrete(value) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(value))


def _factory(algo: str) -> Callable[..., optax.GradientTransformationExtraArgs]:
    constructor = ALGORITHMS[algo]
    signature = inspect.signature(constructor)
    parameters = [p for p in signature.parameters.values() if p.name != "dtype"]

    @functools.wraps(constructor)
    def factory(*args, **kwargs):
        bound = signature.replace(parameters=parameters).bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        traced = {name: value for name, value in values.items() if not _concrete(value)}
        # A traced value (injected under jit) is checked with a stand-in from the spec's domain, then used.
        checked = {
            name: (parameters_by_name[name].default if name in traced else _host(value))
            for name, value in values.items()
        }
        missing = [name for name in traced if checked[name] is inspect.Parameter.empty]
        for name in missing:
            checked[name] = 1e-3
        optimizer = constructor(**checked, dtype=_working_dtype())
        for name, value in traced.items():
            setattr(optimizer, name, value)
        return transformation(optimizer)

    parameters_by_name = {p.name: p for p in parameters}
    factory.__signature__ = signature.replace(
        parameters=parameters, return_annotation=optax.GradientTransformationExtraArgs
    )
    factory.__doc__ = f"stepspec's {algo} (spec page of its family) as an optax transformation; see ``stepspec.optax``."
    return factory


def _working_dtype() -> str:
    """float64 where x64 is enabled in the calling context (``jax.enable_x64`` included), else float32."""
    return "float64" if jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64 else "float32"


def _host(value):
    """A concrete 0-d array (optax.inject_hyperparams passes hyperparameters so) as a Python number."""
    if isinstance(value, (jax.Array,)) and value.shape == ():
        return value.item()
    return value


for _algo in ALGORITHMS:
    globals()[_algo] = _factory(_algo)

__all__ = ["StepspecState", "transformation", *ALGORITHMS]
