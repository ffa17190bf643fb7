"""The Trainable Optimizer in jax, spec/trainable_optimizer.md (tags TO1–TO9): the full pseudo-linear TO,
Diagonal TO and RankOne TO as pure functions over parameter pytrees, compiled once per variant,
structure, dtype and projection (``_core.Optimizer``). Written from the spec page; the NumPy reference is
not called.

Diagonal and RankOne TO keep a, u, v and b as parameter-shaped pytrees; a step is elementwise passes per
leaf that XLA fuses. RankOne's global quantities vᵀx and uᵀr come from one ``reduce_sum`` round of
per-leaf partial sums (uᵀr expanded, ``RankOneTO``). Full TO's A is n × n over the concatenation of the
leaves (``WHOLE``): A x mixes entries of different leaves, so its step joins x, g and b into flat vectors
and splits the results back; it is for small n (``max_memory``, checked on the host at ``init``).

What the step's values decide is decided on the device: the ball's choice (TO8) by ``jnp.where``, and the
step-size check (TO9) by a contraction c the step records beside the spec's fields, which the host reads
after F (one scalar) to warn. Whether there is a projection at all, and whether it has a centre, is
compiled in; the radius and the centre are traced like the rates.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ...errors import HyperparameterError, StepSizeWarning
from .. import _hyperparameters as checked
from ._core import (
    COUNTER,
    DTYPES,
    PARAM,
    WHOLE,
    Optimizer,
    as_leaves,
    hyperparameters,
    log,
    precision,
    reduce_sum,
)

_NEEDS = frozenset({"grad", "params"})


def _leaves(tree) -> list:
    return jax.tree_util.tree_leaves(tree)


def _like(reference_tree, leaves):
    """``leaves`` in the structure of ``reference_tree`` (a parameter-shaped pytree)."""
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(reference_tree), list(leaves))


def _dot(a, b):
    """Σ a_i b_i over one leaf (any shape; 0 for an empty leaf)."""
    return jnp.vdot(a, b)


def _total(partials, dtype):
    """``reduce_sum`` of per-leaf partial sums, zeros without leaves."""
    return reduce_sum(partials) if partials else jnp.zeros((), dtype)


def _split(flat, like: list) -> list:
    """A flat (n,) vector cut into leaves shaped as ``like`` (static offsets)."""
    out, offset = [], 0
    for leaf in like:
        out.append(flat[offset : offset + leaf.size].reshape(leaf.shape))
        offset += leaf.size
    return out


def _join(leaves: list, dtype):
    return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves]) if leaves else jnp.zeros(0, dtype)


# --------------------------------------------------------------------------- shared: schedules, model step, projection


def _decayed(initial, log_decay, exponent):
    """(TO1) initial · ρ^exponent as initial · exp(exponent · log ρ): exactly ``initial`` at ρ = 1."""
    return initial * jnp.exp(exponent.astype(initial.dtype) * log_decay)


def _variable_rates(s, step_before):
    """(η_t of the linear part, η^b_t) for the step t = ``step_before`` + 1 (exponent t − 1)."""
    return (
        _decayed(s["lr_linear"], s["log_lr_opt_decay"], step_before),
        _decayed(s["lr_b"], s["log_lr_opt_decay"], step_before),
    )


def _model_rate(s, t):
    """(TO1) α_t = α₀ ρ_α^{t−1} for the state S_t."""
    return _decayed(s["lr"], s["log_lr_decay"], t - 1)


def _model_update(s, static, t, x: list, g_hat: list) -> list:
    """(TO7, TO8) Π_X(x − α_t ĝ_t) − x per leaf; −α_t ĝ_t exactly without a ball. ‖y − c‖² is one
    reduction round and the ball's choice a ``jnp.where`` on the device."""
    projected, centred = static
    alpha = _model_rate(s, t)
    if not projected:
        return [-alpha * gi for gi in g_hat]
    moved = [xi - alpha * gi for xi, gi in zip(x, g_hat)]
    center = _split(s["center"], x) if centred else [None] * len(x)
    offsets = [yi if ci is None else yi - ci for yi, ci in zip(moved, center)]
    distance = jnp.sqrt(_total([_dot(o, o) for o in offsets], alpha.dtype))
    inside = distance <= s["radius"]
    shrink = s["radius"] / distance  # not selected inside the ball (where the distance may be 0)
    boundary = [o * shrink if ci is None else ci + o * shrink for o, ci in zip(offsets, center)]
    return [jnp.where(inside, yi, bi) - xi for yi, bi, xi in zip(moved, boundary, x)]


class _TrainableOptimizer(Optimizer):
    """What the variants share: the traced rates (TO1), the projection (TO8), the step-size warning (TO9)."""

    linear_rate: str  # the name of the linear part's rate: lr_A, lr_a, lr_uv

    def __init__(self, dtype="float64", needs=_NEEDS, **hp):
        super().__init__(dtype, needs, **hp)
        with precision(dtype):
            self._center = None if self.center is None else jnp.asarray(self.center, DTYPES[dtype])

    def scalars(self):
        values = self.as_scalars(
            lr=self.lr,
            lr_linear=getattr(self, self.linear_rate),
            lr_b=self.lr_b,
            log_lr_decay=log(self.lr_decay),
            log_lr_opt_decay=log(self.lr_opt_decay),
        )
        if self.radius is not None:
            values.update(self.as_scalars(radius=self.radius))
        if self._center is not None:
            values["center"] = self._center
        return values

    def static(self):
        return (self.radius is not None, self.center is not None)

    def check_center(self, structure) -> None:
        checked.check_center(self.center, structure.n)

    def check_result(self, state, tree):
        """(TO9) c ≥ 2 amplifies the approximation error: warn (one fixed message, so Python's default filter
        shows it once per run) and keep the step. A warning turned into an error leaves ``state`` as it was."""
        if float(tree.contraction) >= 2.0:
            warnings.warn(
                f"{self.algo}: an optimizer-variable step with c ≥ 2 amplifies the approximation error "
                "(spec/trainable_optimizer.md#step-size-bound); lower the optimizer-variable rates",
                StepSizeWarning,
                stacklevel=3,  # check_result ← F ← its caller
            )


# --------------------------------------------------------------------------- full TO


class FullTOState(NamedTuple):
    step: jax.Array
    A: jax.Array  # (n, n) over the concatenation of the leaves
    b: object
    contraction: jax.Array  # c = η^A‖x‖² + η^b of the last F (TO9), not a spec field


class FullTO(_TrainableOptimizer):
    algo = "trainable_optimizer"
    layouts = {"step": COUNTER, "A": WHOLE, "b": PARAM}
    StateTree = FullTOState
    linear_rate = "lr_A"

    def initial_state(self, structure):
        n = structure.n
        checked.check_full_state_size(n, self.max_memory)
        self.check_center(structure)
        zero = jnp.zeros((), DTYPES[self.dtype])
        A = jnp.zeros((n, n), DTYPES[self.dtype])
        return FullTOState(COUNTER.store("step", 0, structure), A, structure.zeros(), zero)  # A₀ = 0, b₀ = 0

    @staticmethod
    def step_F(scalars, static, state, step):
        eta_A, eta_b = _variable_rates(scalars, state.step)
        dtype = eta_A.dtype
        x, g, b = (_leaves(tree) for tree in (step.params, step.grad, state.b))
        x_flat = _join(x, dtype)
        r = state.A @ x_flat + _join(b, dtype) - _join(g, dtype)  # (TO2) r_t = A_t x_t + b_t − g_t
        A = state.A - jnp.outer(eta_A * r, x_flat)  # (TO3) A_{t+1} = A_t − η^A_t r_t x_tᵀ
        new_b = [bi - eta_b * ri for bi, ri in zip(b, _split(r, b))]  # (TO4) b_{t+1} = b_t − η^b_t r_t
        contraction = eta_A * (x_flat @ x_flat) + eta_b
        return FullTOState(state.step + 1, A, _like(state.b, new_b), contraction)

    @staticmethod
    def step_G(scalars, static, state, step):
        x, b = _leaves(step.params), _leaves(state.b)
        dtype = scalars["lr"].dtype
        g_hat = state.A @ _join(x, dtype) + _join(b, dtype)  # (TO7) ĝ_t = A_{t+1} x_t + b_{t+1}
        return _like(step.params, _model_update(scalars, static, state.step, x, _split(g_hat, x)))


# --------------------------------------------------------------------------- Diagonal TO


class DiagonalTOState(NamedTuple):
    step: jax.Array
    a: object
    b: object
    contraction: jax.Array  # c = η^a max_i x_i² + η^b of the last F (TO9), not a spec field


class DiagonalTO(_TrainableOptimizer):
    algo = "diagonal_to"
    layouts = {"step": COUNTER, "a": PARAM, "b": PARAM}
    StateTree = DiagonalTOState
    linear_rate = "lr_a"

    def initial_state(self, structure):
        self.check_center(structure)
        zero = jnp.zeros((), DTYPES[self.dtype])
        return DiagonalTOState(COUNTER.store("step", 0, structure), structure.zeros(), structure.zeros(), zero)

    @staticmethod
    def step_F(scalars, static, state, step):
        eta_a, eta_b = _variable_rates(scalars, state.step)
        x, g, a, b = (_leaves(tree) for tree in (step.params, step.grad, state.a, state.b))
        r = [ai * xi + bi - gi for ai, xi, bi, gi in zip(a, x, b, g)]  # (TO2) r_t = a_t ⊙ x_t + b_t − g_t
        new_a = [ai - eta_a * ri * xi for ai, ri, xi in zip(a, r, x)]  # (TO5) a_{t+1} = a_t − η^a_t r_t ⊙ x_t
        new_b = [bi - eta_b * ri for bi, ri in zip(b, r)]  # (TO4)
        # c_i = η^a x_i² + η^b at the largest x_i² = (max_i |x_i|)² (rounding is monotone), from the extremes
        # of x: reductions of the leaves themselves, without an n-sized |x| or x² (maxima, not sums: no part of
        # the step's reduction round)
        extremes = [jnp.maximum(jnp.max(xi, initial=0), -jnp.min(xi, initial=0)) for xi in x]
        largest = jnp.max(jnp.stack(extremes)) if x else jnp.zeros((), eta_a.dtype)
        return DiagonalTOState(
            state.step + 1, _like(state.a, new_a), _like(state.b, new_b), eta_a * jnp.square(largest) + eta_b
        )

    @staticmethod
    def step_G(scalars, static, state, step):
        x, a, b = (_leaves(tree) for tree in (step.params, state.a, state.b))
        g_hat = [ai * xi + bi for ai, xi, bi in zip(a, x, b)]  # (TO7) ĝ_t = a_{t+1} ⊙ x_t + b_{t+1}
        return _like(step.params, _model_update(scalars, static, state.step, x, g_hat))


# --------------------------------------------------------------------------- RankOne TO


class RankOneTOState(NamedTuple):
    step: jax.Array
    u: object
    v: object
    b: object
    contraction: jax.Array  # c = η^b of the last F (TO9: only the b-part has the bound), not a spec field


class RankOneTO(_TrainableOptimizer):
    """One reduction round per step: the per-leaf partial sums (vᵀx, uᵀu, uᵀb, uᵀg, xᵀx) give vᵀx and, since
    r = u (vᵀx) + b − g, uᵀr = (uᵀu)(vᵀx) + uᵀb − uᵀg. The compiled step (F then θ + G) forms
    v_{t+1}ᵀx = vᵀx − η^{uv}(uᵀr)‖x‖² from the same sums; G on its own, from S_t, reduces v_{t+1}ᵀx afresh."""

    algo = "rank_one_to"
    layouts = {"step": COUNTER, "u": PARAM, "v": PARAM, "b": PARAM}
    StateTree = RankOneTOState
    linear_rate = "lr_uv"

    def initial_state(self, structure):
        self.check_center(structure)
        # u = v = 0 is a stationary point of ℓ in (u, v): v starts at the unit vector 1/√n (spec: initialisation)
        entry = 1 / math.sqrt(structure.n) if structure.n else 0.0
        dtype = DTYPES[self.dtype]
        v = structure.unflatten(jnp.full(shape, entry, dtype) for shape in structure.shapes)
        zero = jnp.zeros((), dtype)
        return RankOneTOState(COUNTER.store("step", 0, structure), structure.zeros(), v, structure.zeros(), zero)

    @staticmethod
    def _train(scalars, state, step):
        """F's new state and v_{t+1}ᵀx_t."""
        eta_uv, eta_b = _variable_rates(scalars, state.step)
        x, g, u, v, b = (_leaves(tree) for tree in (step.params, step.grad, state.u, state.v, state.b))
        partials = [
            jnp.stack([_dot(vi, xi), _dot(ui, ui), _dot(ui, bi), _dot(ui, gi), _dot(xi, xi)])
            for ui, vi, bi, xi, gi in zip(u, v, b, x, g)
        ]
        vx, uu, ub, ug, xx = _total(partials, eta_uv.dtype) if x else jnp.zeros(5, eta_uv.dtype)
        ur = uu * vx + ub - ug  # u_tᵀr_t
        r = [ui * vx + bi - gi for ui, bi, gi in zip(u, b, g)]  # (TO2) r_t = u_t (v_tᵀx_t) + b_t − g_t, old u, v, b
        new_u = [ui - (eta_uv * vx) * ri for ui, ri in zip(u, r)]  # (TO6) u_{t+1} = u_t − η r_t (v_tᵀx_t)
        new_v = [vi - (eta_uv * ur) * xi for vi, xi in zip(v, x)]  # (TO6) v_{t+1} = v_t − η x_t (u_tᵀr_t)
        new_b = [bi - eta_b * ri for bi, ri in zip(b, r)]  # (TO4)
        tree = RankOneTOState(
            state.step + 1, _like(state.u, new_u), _like(state.v, new_v), _like(state.b, new_b), eta_b
        )
        return tree, vx - eta_uv * ur * xx

    @staticmethod
    def _update(scalars, static, state, x, vx):
        u, b = _leaves(state.u), _leaves(state.b)
        g_hat = [ui * vx + bi for ui, bi in zip(u, b)]  # (TO7) ĝ_t = u_{t+1} (v_{t+1}ᵀx_t) + b_{t+1}
        return _model_update(scalars, static, state.step, x, g_hat)

    @staticmethod
    def step_F(scalars, static, state, step):
        return RankOneTO._train(scalars, state, step)[0]

    @staticmethod
    def step_G(scalars, static, state, step):
        x, v = _leaves(step.params), _leaves(state.v)
        vx = _total([_dot(vi, xi) for vi, xi in zip(v, x)], scalars["lr"].dtype)
        return _like(step.params, RankOneTO._update(scalars, static, state, x, vx))

    @classmethod
    def pure_step(cls, scalars, static, tree, step, params):
        tree, vx = cls._train(scalars, tree, step)
        update = cls._update(scalars, static, tree, _leaves(step.params), vx)
        return tree, _like(params, [p + d for p, d in zip(_leaves(params), update)])


# --------------------------------------------------------------------------- constructors (the spec's signatures)


def _projection(radius, center) -> dict:
    """The ball of (TO8), checked (``_hyperparameters.projection``): a centre given as a vector or a pytree
    shaped like the parameters is kept flat on the host in float64."""

    def flat_center(center):
        with precision("float64"):
            leaves, structure = as_leaves("center", center, HyperparameterError, "float64")
            return np.asarray(structure.join(leaves))

    return checked.projection(radius, center, flat_center)


def trainable_optimizer(
    lr, lr_A, lr_b=None, lr_decay=1.0, lr_opt_decay=1.0, radius=None, center=None, max_memory=2**30, *, dtype="float64"
):
    """Pseudo-linear TO (paper 002, Algorithm 1): n² + n optimizer variables; ``lr_b`` defaults to ``lr_A``."""
    hp = hyperparameters(
        "trainable_optimizer",
        lr=lr,
        lr_A=lr_A,
        lr_b=lr_A if lr_b is None else lr_b,
        lr_decay=lr_decay,
        lr_opt_decay=lr_opt_decay,
        max_memory=max_memory,
    )
    return FullTO(dtype, **hp, **_projection(radius, center))


def diagonal_to(lr, lr_a, lr_b=None, lr_decay=1.0, lr_opt_decay=1.0, radius=None, center=None, *, dtype="float64"):
    """Diagonal TO (paper 002, Algorithm 2): A = diag(a); ``lr_b`` defaults to ``lr_a``."""
    hp = hyperparameters(
        "diagonal_to",
        lr=lr,
        lr_a=lr_a,
        lr_b=lr_a if lr_b is None else lr_b,
        lr_decay=lr_decay,
        lr_opt_decay=lr_opt_decay,
    )
    return DiagonalTO(dtype, **hp, **_projection(radius, center))


def rank_one_to(lr, lr_uv, lr_b=None, lr_decay=1.0, lr_opt_decay=1.0, radius=None, center=None, *, dtype="float64"):
    """RankOne TO (paper 002, Algorithm 3): A = u vᵀ; ``lr_b`` defaults to ``lr_uv``."""
    hp = hyperparameters(
        "rank_one_to",
        lr=lr,
        lr_uv=lr_uv,
        lr_b=lr_uv if lr_b is None else lr_b,
        lr_decay=lr_decay,
        lr_opt_decay=lr_opt_decay,
    )
    return RankOneTO(dtype, **hp, **_projection(radius, center))
