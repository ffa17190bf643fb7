"""Hypergradient descent (Baydin et al. 2018), spec/hypergradient.md (tags HD1–HD9): SGD-HD with optional
heavy-ball or Nesterov momentum, and Adam-HD, in jax over parameter pytrees (``_core.Optimizer``). Written from
the spec page; the NumPy reference is not called.

The step size α is one scalar that (HD2) changes by β h_t each step, an increment that can be far below
α's round-off (Adam-HD's recommended β = 1e-8): added to a float32 α it would be lost entirely and α would
stop moving. The reference keeps α as a host float64 and the torch backend as a float64 device scalar; in
jax float32 no float64 exists inside the step, so α is kept as an unevaluated sum hi + lo of two scalars of
the working precision (a double-word number) and (HD2) is a compensated addition: α then carries about twice
the working precision's digits, and hi is α rounded to it, the value the step (HD6) is taken with.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ...errors import StateError
from .. import _hyperparameters as checked
from ._core import COUNTER, DTYPES, PARAM, Layout, Optimizer, log, reduce_sum


def _map(function, *trees):
    return jax.tree_util.tree_map(function, *trees)


# --------------------------------------------------------------------------- α as a double-word scalar


def _double_word(value, dtype: str) -> tuple:
    """``value`` as (hi, lo) of ``dtype`` with hi + lo = value to about twice its precision: hi the value
    rounded, lo the rest. A host number is split on the host in float64; a jax array (a value injected into the
    optax transformation) is already in the working precision (lo = 0)."""
    if isinstance(value, jax.Array):
        hi = jnp.asarray(value, DTYPES[dtype])
        return hi, jnp.zeros_like(hi)
    hi = np.asarray(value, dtype)
    return jnp.asarray(hi), jnp.asarray(np.asarray(float(value) - float(hi), dtype))


def _add_to_double_word(hi, lo, increment):
    """(hi, lo) + increment, renormalised: Knuth's error-free sum of hi and the increment, the error and lo added,
    then a fast two-sum so that hi is the sum rounded and |lo| ≤ half an ulp of hi."""
    total = hi + increment
    increment_part = total - hi
    error = (hi - (total - increment_part)) + (increment - increment_part)
    error = error + lo
    new_hi = total + error
    return new_hi, error - (new_hi - total)


class DoubleWordScalar(Layout):
    """A real scalar stored as (hi, lo), two 0-d arrays of the working precision whose sum is the value, and
    shown as the Python float hi + lo, in every precision (spec/hypergradient.md: α is a scalar of the spec,
    float64 in the reference). An override is split into hi and lo, so it keeps about twice the working
    precision's digits (48 bits of a float64 in float32), and ``init`` reproduces any value shown."""

    def flat(self, stored, structure):
        hi, lo = stored
        return float(hi) + float(lo)

    def store(self, name, value, structure, default=None):
        array = np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise StateError(name, f"must be a real scalar, got dtype {array.dtype}")
        if array.shape != ():
            raise StateError(name, f"must have shape (), got {array.shape}")
        if not math.isfinite(float(array)):
            raise StateError(name, f"must be finite, got {float(array)}")
        return _double_word(float(array), structure.dtype)


# --------------------------------------------------------------------------- hypergradient descent


class HypergradientState(NamedTuple):
    step: jax.Array
    alpha: tuple  # (hi, lo): α = hi + lo
    direction: object
    m: object
    v: object


class Hypergradient(Optimizer):
    algo = "hypergradient"
    layouts = {"step": COUNTER, "alpha": DoubleWordScalar(), "direction": PARAM, "m": PARAM, "v": PARAM}
    StateTree = HypergradientState

    def __init__(self, dtype="float64", needs=frozenset({"grad"}), **hyperparameters):
        super().__init__(dtype, needs, **hyperparameters)
        # momentum on or off selects the program, fixed when built (its value is traced, and may be injected)
        self.with_momentum = hyperparameters["momentum"] != 0

    def initial_state(self, structure):
        return HypergradientState(
            step=COUNTER.store("step", 0, structure),
            alpha=_double_word(self.alpha0, structure.dtype),
            direction=structure.zeros(),
            m=structure.zeros(),
            v=structure.zeros(),
        )

    def scalars(self):
        beta1, beta2 = self.betas
        return self.as_scalars(
            hypergradient_lr=self.hypergradient_lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            beta1=beta1,
            beta2=beta2,
            one_minus_beta1=1 - beta1,
            one_minus_beta2=1 - beta2,
            log_beta1=log(beta1),  # (HD5) 1 − βᵗ = −expm1(t log β), accurate at every t; −inf at β = 0
            log_beta2=log(beta2),
            eps=self.eps,
        )

    def static(self):
        return (self.base, self.convention, self.with_momentum, self.nesterov)

    @staticmethod
    def step_F(scalars, static, state, step):
        base, convention, with_momentum, nesterov = static
        s, t = scalars, state.step + 1
        g = step.grad
        if step.params is not None:  # (HD7) g̃_t = g_t + λθ_{t−1}, everywhere after it
            g = _map(lambda g, p: g + s["weight_decay"] * p, g, step.params)
        # (HD1) h_t = g̃_t·∇_α u_{t−1} = −g̃_t·direction_{t−1}: per-leaf partial sums, the step's one reduction
        partials = [
            jnp.tensordot(a, b, axes=a.ndim) for a, b in zip(*map(jax.tree_util.tree_leaves, (g, state.direction)))
        ]
        inner = reduce_sum(partials) if partials else jnp.zeros((), state.alpha[0].dtype)  # an empty pytree
        alpha = _add_to_double_word(*state.alpha, s["hypergradient_lr"] * inner)  # (HD2) α_t = α_{t−1} − β h_t
        m, v = state.m, state.v
        if base == "sgd":
            if not with_momentum:  # (HD3) ∇_α u_t = −g̃_t
                direction = g
            else:
                mu = s["momentum"]
                m = _map(lambda b, g: mu * b + g, m, g)  # (HD8) b_t = μ b_{t−1} + g̃_t
                # (HD9) Nesterov g̃_t + μ b_t, or the heavy ball b_t
                direction = _map(lambda g, b: g + mu * b, g, m) if nesterov else m
        else:
            m = _map(lambda m, g: s["beta1"] * m + s["one_minus_beta1"] * g, m, g)  # (HD4)
            v = _map(lambda v, g: s["beta2"] * v + s["one_minus_beta2"] * g * g, v, g)
            bias1 = -jnp.expm1(t * s["log_beta1"])  # 1 − β1ᵗ
            bias2 = -jnp.expm1(t * s["log_beta2"])  # 1 − β2ᵗ
            if convention == "authors_code":  # ε before the bias correction (old torch.optim.Adam form)
                factor = jnp.sqrt(bias2) / bias1
                direction = _map(lambda m, v: factor * m / (jnp.sqrt(v) + s["eps"]), m, v)
            else:  # (HD5) m̂_t/(√v̂_t + ε)
                direction = _map(lambda m, v: (m / bias1) / (jnp.sqrt(v / bias2) + s["eps"]), m, v)
        return HypergradientState(step=t, alpha=alpha, direction=direction, m=m, v=v)

    @staticmethod
    def step_G(scalars, static, state, step):
        alpha = state.alpha[0]  # α_t rounded to the working precision
        return _map(lambda d: -alpha * d, state.direction)  # (HD6) u_t = −α_t·direction_t


def hypergradient(
    base="sgd",
    alpha0=1e-3,
    hypergradient_lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    convention="paper",
    momentum=0.0,
    nesterov=False,
    weight_decay=0.0,
    *,
    dtype="float64",
):
    """SGD-HD / SGDN-HD / Adam-HD (spec/hypergradient.md): the step size α is one double-word scalar."""
    hp, needs = checked.hypergradient(
        base, alpha0, hypergradient_lr, betas, eps, convention, momentum, nesterov, weight_decay
    )
    return Hypergradient(dtype, needs=needs, **hp)
