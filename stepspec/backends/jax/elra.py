"""ELRA in jax, spec/elra.md (tags E1–E14): ``elra`` (keeps G_{t−1}) and ``elra_lean`` (Sec. 3.6: one stored
vector), as pure compiled F and G over parameter pytrees. Written from the spec page; the NumPy reference is
not called.

Everything lives in the state pytree: α, the losses, the period statistics and the authors' dampers are
0-d arrays of the working precision (``SCALAR``), the decisions int32 counters, and ``means`` the fixed
(4,) history f̄_s … f̄_{s−3} whose valid length is ``periods`` (at most 4 are read). Every data-dependent
rule — the retrace (E7), the α cases (E1–E3), the limits (E4–E6), the period's closing and the batch
controller (E8–E9), the authors' dampers — is a ``jnp.where`` on 0-d values; the one vector choice (step
from x_t along G̃_t, or back from x_{t−1} after a retrace) is a ``lax.cond``, so after the reduction an
accepted step reads only θ and g. One compiled F and one G serve a run: the hyperparameters, the switches included, are
traced scalars; only ``boost`` (the shape of x_sum, x_mean) and ``convention`` are compiled in.

A step's inner products are per-leaf partial sums combined in one ``reduce_sum`` round. ``elra`` reduces
(‖G_{t−1}‖², ⟨G_{t−1}, G_{t−1} − G̃_t⟩, ‖G_t‖²): the denominator of (E1) is formed entry by entry, not as
the difference of two sums of size ‖G‖², so it does not cancel when successive gradients nearly agree.
``elra_lean`` reduces (⟨ω x_{t−1} − x_t, G_t⟩, ‖G_t‖²), the difference formed entry by entry as
(x_{t−1} − x_t) + (ω − 1) x_{t−1} (spec/elra.md#backends). In float32 no float64 exists: these entrywise
forms, not a wider accumulator, are what keeps a step within the tolerance policy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ...errors import ObservationError, StateError
from ...reference.elra import (
    ABSOLUTE_BOUND,
    AUTHORS_ERROR_DAMPER,
    AUTHORS_GROWTH_DAMPER,
    AUTHORS_SMALL_DIMENSION,
    CROP,
    GROWTH,
    HISTORY,
    NO_LIMIT,
    RATIO_CAP,
    WARMUP_FLOOR,
)
from .. import _hyperparameters as checked
from ._core import (
    COUNTER,
    COUNTER_DTYPE,
    DTYPES,
    PARAM,
    SCALAR,
    WHOLE,
    Optimizer,
    State,
    Structure,
    as_leaves,
    precision,
    reduce_sum,
)

INT32_MAX = int(np.iinfo(np.int32).max)
MULTIPLE_MAX = 2**30  # the computed multiple's ceiling: an int32 exactly representable in float32 too


def _map(function, *trees):
    return jax.tree_util.tree_map(function, *trees)


def _partial_sums(rows_of_leaves) -> list[jax.Array]:
    """Per leaf, the stacked partial sums a step reduces (a (k,) array per leaf)."""
    return [jnp.stack(row) for row in rows_of_leaves]


def _reduced(rows: list[jax.Array], width: int, dtype) -> jax.Array:
    """The step's one reduction round over the leaves' partial sums (zeros for an empty structure)."""
    return reduce_sum(rows) if rows else jnp.zeros(width, dtype)


def _safe_divide(numerator, denominator, usable):
    """numerator/denominator where ``usable``, else 0, without evaluating a division by zero."""
    return jnp.where(usable, numerator / jnp.where(usable, denominator, 1), 0)


POWER_BITS = 11  # 1.5^e overflows float64 from e = 1751 < 2^11: larger exponents are clamped


def _power(base, exponent):
    """base**exponent for an int32 exponent ≥ 0, by squaring over its low ``POWER_BITS`` bits (the exponent
    clamped below 2^POWER_BITS): exact while the result is representable (1.5^e, as the reference's float
    power is), with a static trip count."""
    exponent = jnp.minimum(exponent, 2**POWER_BITS - 1)
    result, square = jnp.ones_like(base), base
    for bit in range(POWER_BITS):
        result = jnp.where((exponent >> bit) & 1, result * square, result)
        square = square * square
    return result


class ELRAState(NamedTuple):
    step: jax.Array
    alpha: jax.Array
    x_prev: object
    g_prev: object
    f_prev: jax.Array
    f_initial: jax.Array
    retraced: jax.Array
    limit: jax.Array
    periods: jax.Array
    period_batches: jax.Array
    period_count: jax.Array
    period_mean: jax.Array
    period_m2: jax.Array
    last_mean: jax.Array
    last_std: jax.Array
    means: jax.Array
    updates: jax.Array
    multiple: jax.Array
    x_sum: object
    x_mean: object
    growth_damper: jax.Array
    error_damper: jax.Array
    relaxed_best: jax.Array


class LeanELRAState(NamedTuple):
    step: jax.Array
    alpha: jax.Array
    x_prev: object
    g_prev_sq: jax.Array
    grad_scale: jax.Array
    rejected_alpha: jax.Array
    f_prev: jax.Array
    f_initial: jax.Array
    retraced: jax.Array
    limit: jax.Array
    periods: jax.Array
    period_batches: jax.Array
    period_count: jax.Array
    period_mean: jax.Array
    period_m2: jax.Array
    last_mean: jax.Array
    last_std: jax.Array
    means: jax.Array
    updates: jax.Array
    multiple: jax.Array
    x_sum: object
    x_mean: object


COMMON_LAYOUTS = {
    "step": COUNTER,
    "alpha": SCALAR,
    "x_prev": PARAM,
    "f_prev": SCALAR,
    "f_initial": SCALAR,
    "retraced": COUNTER,
    "limit": COUNTER,
    "periods": COUNTER,
    "period_batches": COUNTER,
    "period_count": COUNTER,
    "period_mean": SCALAR,
    "period_m2": SCALAR,
    "last_mean": SCALAR,
    "last_std": SCALAR,
    "means": WHOLE,
    "updates": COUNTER,
    "multiple": COUNTER,
}


class _ELRABase(Optimizer):
    """What both forms share: the α rules (E1–E6), the retrace rule (E7), the period statistics, the batch
    controller (E8–E10) and boosting (E11), as pure functions of 0-d arrays."""

    form_layouts: dict

    def __init__(self, dtype="float64", needs=frozenset({"grad", "params", "loss"}), **hp):
        super().__init__(dtype, needs=needs, **hp)
        boosted = PARAM if self.boost else WHOLE  # x_sum, x_mean: n, or an empty vector without boost
        layouts = {**COMMON_LAYOUTS, **self.form_layouts, "x_sum": boosted, "x_mean": boosted}
        self.layouts = {name: layouts[name] for name in self.StateTree._fields}

    def init(self, theta0, **initial_state) -> State:
        """S_0 on ``theta0``: x_prev = θ_0 (the point the first step starts from), unless overridden."""
        s = super().init(theta0, **initial_state)
        if "x_prev" in initial_state:
            return s
        with precision(self.dtype):
            params, structure = as_leaves("theta0", theta0, StateError, self.dtype)
        return State(s.tree._replace(x_prev=structure.unflatten(params)), structure, self.layouts)

    def common_initial_state(self, structure: Structure) -> dict:
        zero = jnp.zeros((), DTYPES[structure.dtype])
        if self.boost:
            x_sum, x_mean = structure.zeros(), structure.zeros()
        else:
            x_sum = x_mean = jnp.zeros(0, zero.dtype)

        def counter(value):
            return jnp.asarray(value, COUNTER_DTYPE)

        return {
            "step": counter(0),
            "alpha": jnp.asarray(self.lr, zero.dtype),
            "x_prev": structure.zeros(),
            "f_prev": zero,
            "f_initial": zero,
            "retraced": counter(0),
            "limit": counter(NO_LIMIT),
            "periods": counter(0),
            "period_batches": counter(0),
            "period_count": counter(0),
            "period_mean": zero,
            "period_m2": zero,
            "last_mean": zero,
            "last_std": zero,
            "means": jnp.zeros(HISTORY, zero.dtype),
            "updates": counter(0),
            "multiple": counter(min(self.initial_multiple, INT32_MAX)),
            "x_sum": x_sum,
            "x_mean": x_mean,
        }

    def scalars(self) -> dict:
        """Every hyperparameter as a traced real scalar (the optax layer casts them so): switches as 0 or 1,
        counts compared with the counters in the working precision (exact below 2^24 in float32)."""
        return self.as_scalars(
            lr=self.lr,
            max_ratio=self.max_ratio,
            lr_min=self.lr_min,
            lr_max=self.lr_max,
            crop=math.inf if self.crop is None else self.crop,
            warmup_floor=self.warmup_floor,
            retrace_sigmas=self.retrace_sigmas,
            weight_decay=self.weight_decay,
            initial_multiple=self.initial_multiple,
            period=self.period,
            warmup_steps=self.warmup_steps,
            kappa_on=self.correction == "paper",
            retrace=self.retrace,
            initial_retrace=self.initial_retrace,
            batch_control=self.batch_control,
            gradient_decay=self.gradient_decay,
        )

    def static(self) -> tuple:
        return (self.boost, getattr(self, "convention", "paper"))

    # -- α -----------------------------------------------------------------------------------

    @staticmethod
    def adapted_alpha(s, alpha, g_prev_sq, denominator):
        """(E1–E3) α κ ‖G_{t−1}‖² / D, D = ‖G_{t−1}‖² − ⟨G̃_t, G_{t−1}⟩, the ratio capped at γ_max; a zero last
        gradient keeps α (nothing learned about the curvature), D ≤ 0 is the cap case. (α, limit)."""
        kappa = jnp.where(s["kappa_on"] != 0, 1.0 + 0.15 / (1.0 + alpha * alpha), 1.0)  # (E2)
        positive = denominator > 0
        ratio = _safe_divide(kappa * g_prev_sq, denominator, positive)
        capped = ~positive | (ratio > s["max_ratio"])
        kept = g_prev_sq == 0
        new = jnp.where(kept, alpha, jnp.where(capped, alpha * s["max_ratio"], alpha * ratio))
        return new, jnp.where(~kept & capped, RATIO_CAP, NO_LIMIT)

    @staticmethod
    def retrace_alpha(alpha, g_prev_sq, f, f_prev):
        """(E7) α ½α‖G_{t−1}‖²/(f_t − f_{t−1} + α‖G_{t−1}‖²), the factor at most ½; halve when the parabola has
        no minimum (‖G_{t−1}‖ = 0 or a denominator ≤ 0)."""
        denominator = f - f_prev + alpha * g_prev_sq
        parabola = (g_prev_sq != 0) & (denominator > 0)
        factor = _safe_divide(0.5 * alpha * g_prev_sq, denominator, parabola)
        return alpha * jnp.where(parabola, jnp.minimum(0.5, factor), 0.5)

    @staticmethod
    def limited_alpha(s, alpha, limit, norm, t, retraced):
        """(E4) crop, (E5) warm-up floor (not on a retrace), (E6) absolute bounds, in that order; ``norm`` is
        ‖G‖ of the gradient the step uses."""
        cropped = alpha * norm > s["crop"]  # never with norm = 0 (c > 0)
        alpha, limit = (
            jnp.where(cropped, _safe_divide(s["crop"], norm, cropped), alpha),
            jnp.where(cropped, CROP, limit),
        )
        floored = (
            (t.astype(alpha.dtype) <= s["warmup_steps"]) & ~retraced & (norm > 0) & (alpha * norm < s["warmup_floor"])
        )
        alpha, limit = (
            jnp.where(floored, _safe_divide(s["warmup_floor"], norm, floored), alpha),
            jnp.where(floored, WARMUP_FLOOR, limit),
        )
        bounded = jnp.minimum(jnp.maximum(alpha, s["lr_min"]), s["lr_max"])
        return bounded, jnp.where(bounded != alpha, ABSOLUTE_BOUND, limit)

    @staticmethod
    def should_retrace(s, state, f):
        """(E7) f above the last period's f̄ + kσ; before the first period closes, above f(x_0) + 0.1|f(x_0)|."""
        after_periods = f > state.last_mean + s["retrace_sigmas"] * state.last_std
        initially = (s["initial_retrace"] != 0) & (f > state.f_initial + 0.1 * jnp.abs(state.f_initial))
        return (s["retrace"] != 0) & jnp.where(state.periods > 0, after_periods, initially)

    @staticmethod
    def gradient_scale(s, state):
        """(E10) G̃ = G · m_0/m_t, m_t the multiple this observation averaged."""
        return jnp.where(s["gradient_decay"] != 0, s["initial_multiple"] / state.multiple.astype(s["lr"].dtype), 1.0)

    # -- periods -------------------------------------------------------------------------------

    @staticmethod
    def period_fields(s, static, state, f, theta, accepted) -> dict:
        """(E8, E9, E11) Count this step's minimal batches, and its loss and point when accepted; close the
        period once it has consumed ``period`` minimal batches and holds an accepted loss."""
        boost = static[0]
        real = s["lr"].dtype
        batches = state.period_batches + state.multiple
        count = state.period_count + accepted.astype(COUNTER_DTYPE)
        delta = f - state.period_mean
        mean = jnp.where(
            accepted, state.period_mean + _safe_divide(delta, count.astype(real), accepted), state.period_mean
        )
        m2 = jnp.where(accepted, state.period_m2 + delta * (f - mean), state.period_m2)  # Welford
        closes = (batches.astype(real) >= s["period"]) & (count > 0)
        std = jnp.sqrt(_safe_divide(m2, count.astype(real), count > 0))  # population σ
        means = jnp.where(closes, jnp.concatenate([mean[None], state.means[:-1]]), state.means)
        periods = state.periods + closes.astype(COUNTER_DTYPE)
        x_sum, x_mean = state.x_sum, state.x_mean
        if boost:
            x_sum = _map(lambda total, x: total + jnp.where(accepted, x, 0), x_sum, theta)
            x_mean = _map(lambda total, old: jnp.where(closes, total / count.astype(real), old), x_sum, x_mean)
            x_sum = _map(lambda total: jnp.where(closes, 0, total), x_sum)
        rising = (periods >= 2) & (means[0] > means[1] + std / 10)  # (1)
        noisy = std > 0.5 * jnp.abs(means[0])  # (2) σ_s/f̄_s > ½
        stalled = (periods >= 4) & (means[3] < jnp.minimum(jnp.minimum(means[0], means[1]), means[2]))  # (3)
        triggered = (s["batch_control"] != 0) & closes & (rising | noisy | stalled)
        updates = state.updates + triggered.astype(COUNTER_DTYPE)
        # (E9) cascades: exponent k − 2⌊k/3⌋ after k updates; m_0 · 1.5^e rounded half up, at least 1
        exponent = updates - 2 * (updates // 3)
        exact = s["initial_multiple"] * _power(jnp.asarray(GROWTH, real), exponent)
        rounded = jnp.minimum(jnp.maximum(jnp.floor(exact + 0.5), 1.0), MULTIPLE_MAX)
        zero = jnp.zeros((), real)
        return {
            "periods": periods,
            "period_batches": jnp.where(closes, 0, batches),
            "period_count": jnp.where(closes, 0, count),
            "period_mean": jnp.where(closes, zero, mean),
            "period_m2": jnp.where(closes, zero, m2),
            "last_mean": jnp.where(closes, mean, state.last_mean),
            "last_std": jnp.where(closes, std, state.last_std),
            "means": means,
            "updates": updates,
            "multiple": jnp.where(triggered, rounded.astype(COUNTER_DTYPE), state.multiple),
            "x_sum": x_sum,
            "x_mean": x_mean,
        }


# --------------------------------------------------------------------------- elra


def _elra_sums(grad, g_prev, scale, dtype) -> jax.Array:
    """(‖G_{t−1}‖², ⟨G_{t−1}, G_{t−1} − G̃_t⟩, ‖G_t‖²): per-leaf partial sums, one reduction round."""
    rows = _partial_sums(
        (jnp.sum(h * h), jnp.sum(h * (h - scale * g)), jnp.sum(g * g))
        for g, h in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(g_prev))
    )
    return _reduced(rows, 3, dtype)


def _elra_update(x_from, g_from, theta, alpha, decay):
    """(E12) ω x_from − α G_from − θ, as (x_from − θ) + (ω − 1) x_from − α G_from: exactly −α G̃_t after an
    accepted step without weight decay (x_from = θ)."""
    return _map(lambda x, g, p: (x - p) + (decay - 1) * x - alpha * g, x_from, g_from, theta)


class ELRA(_ELRABase):
    algo = "elra"
    StateTree = ELRAState
    form_layouts = {"g_prev": PARAM, "growth_damper": SCALAR, "error_damper": SCALAR, "relaxed_best": SCALAR}

    def initial_state(self, structure):
        common = self.common_initial_state(structure)
        real = common["alpha"].dtype
        return ELRAState(
            **common,
            g_prev=structure.zeros(),
            growth_damper=jnp.asarray(AUTHORS_GROWTH_DAMPER, real),
            error_damper=jnp.asarray(AUTHORS_ERROR_DAMPER, real),
            relaxed_best=jnp.zeros((), real),
        )

    def check_F(self, state, step):
        # the authors' √T: the January code raises on a negative relaxed best, and so does the convention
        if self.convention == "authors_code" and int(state.tree.step) >= 1 and float(state.tree.relaxed_best) < 0:
            raise ObservationError(
                "loss",
                "convention='authors_code' takes √ of the relaxed best loss, which is negative here; the "
                "January-2024 code fails the same way (spec/elra.md#authors-code): shift the loss by a constant",
            )

    @classmethod
    def advance(cls, s, static, state, step):
        """Everything of F but the vectors: (the new state's scalar fields, retraced, the gradient scale)."""
        if static[1] == "authors_code":
            return cls.advance_authors_code(s, static, state, step)
        f, theta, t = step.loss, step.params, state.step + 1
        first = state.step == 0
        scale = cls.gradient_scale(s, state)
        retraced = ~first & cls.should_retrace(s, state, f)
        g_prev_sq, denominator, g_sq = _elra_sums(step.grad, state.g_prev, scale, f.dtype)
        adapted, adapted_limit = cls.adapted_alpha(s, state.alpha, g_prev_sq, denominator)
        alpha = jnp.where(
            first, s["lr"], jnp.where(retraced, cls.retrace_alpha(state.alpha, g_prev_sq, f, state.f_prev), adapted)
        )
        limit = jnp.where(first | retraced, NO_LIMIT, adapted_limit)
        norm = jnp.where(retraced, jnp.sqrt(g_prev_sq), scale * jnp.sqrt(g_sq))
        alpha, limit = cls.limited_alpha(s, alpha, limit, norm, t, retraced)
        fields = {
            "step": t,
            "alpha": alpha,
            "limit": limit.astype(COUNTER_DTYPE),
            "retraced": retraced.astype(COUNTER_DTYPE),
            "f_prev": jnp.where(retraced, state.f_prev, f),
            "f_initial": jnp.where(first, f, state.f_initial),
            **cls.period_fields(s, static, state, f, theta, ~retraced),
        }
        return fields, retraced, scale

    @staticmethod
    def advance_authors_code(s, static, state, step):
        """The January-2024 code's step (spec/elra.md#authors-code): its retrace tolerance, growth damper and
        error damper, all branches as selections."""
        f, theta, t = step.loss, step.params, state.step + 1
        real = f.dtype
        n = sum(leaf.size for leaf in jax.tree_util.tree_leaves(theta))
        first = state.step == 0
        best, error_damper, alpha_prev = state.relaxed_best, state.error_damper, state.alpha
        root_best = jnp.sqrt(jnp.maximum(best, 0))  # a negative T is refused on the host (check_F)
        tolerance = 25.0 + (2500.0 + 71.0 * root_best) / (1.0 + jnp.sqrt(error_damper))
        start = (n <= AUTHORS_SMALL_DIMENSION) | (f < 1.1 * state.f_initial)
        retraced = ~first & ~(start & (f < 1.1 * tolerance * best))
        damper = state.growth_damper
        damper = jnp.where(
            ~retraced,
            damper / 3.9,
            jnp.where(damper > 1.0, jnp.where(damper < 62500.0, 16.0 * damper, AUTHORS_GROWTH_DAMPER), damper + 16.0),
        )
        cap = 1e6 / (1.0 + damper)
        g_prev_sq, denominator, _ = _elra_sums(step.grad, state.g_prev, jnp.ones((), real), real)
        rise = f - state.f_prev + alpha_prev * g_prev_sq
        # the code divides by it unguarded; stepspec halves at an exact 0 instead of raising
        back = jnp.where(
            rise != 0, _safe_divide(alpha_prev * 0.5 * alpha_prev * g_prev_sq, rise, rise != 0), 0.5 * alpha_prev
        )
        shrink = jnp.where(g_prev_sq > 0, _safe_divide(denominator, g_prev_sq, g_prev_sq > 0), 1.0)
        if n <= AUTHORS_SMALL_DIMENSION:
            adapted = alpha_prev / shrink
        else:
            base = (2.35 / state.f_initial) ** 2 * best
            term = jnp.where(base > 0, base, 0) ** 0.8
            term = jnp.where(term < 0.7, term, 0.7)
            term = jnp.where(term > 0.0, term, 0.0)
            adapted = alpha_prev / (shrink * (1.0 - 0.14 * term))
        adapted = jnp.where(cap * shrink < 1.0, alpha_prev * cap, adapted)
        alpha = jnp.minimum(jnp.maximum(jnp.where(retraced, back, adapted), s["lr_min"]), s["lr_max"])
        worse = ~retraced & (f > state.f_prev)
        error_damper = jnp.where(
            ~worse,
            error_damper / 1.69,
            jnp.where(
                error_damper < 1.0,
                error_damper + 16.0,
                # tested before multiplying: E can reach just under 16 E_0
                jnp.where(error_damper < AUTHORS_ERROR_DAMPER, 16.0 * error_damper, AUTHORS_ERROR_DAMPER),
            ),
        )
        bounded = (alpha == s["lr_min"]) | (alpha == s["lr_max"])

        def later(new, old):  # the first call records f_0 and steps with the initial α: the rest is kept
            return jnp.where(first, old, new)

        fields = {
            "step": t,
            "alpha": later(alpha, alpha_prev),
            "limit": later(jnp.where(bounded, ABSOLUTE_BOUND, NO_LIMIT).astype(COUNTER_DTYPE), state.limit),
            "retraced": later(retraced.astype(COUNTER_DTYPE), state.retraced),
            "f_prev": jnp.where(retraced, state.f_prev, f),
            "f_initial": jnp.where(first, f, state.f_initial),
            "growth_damper": later(damper, state.growth_damper),
            "error_damper": later(error_damper, state.error_damper),
            "relaxed_best": jnp.where(first | (f < best), f, 1.1 * best),
            **_ELRABase.period_fields(s, static, state, f, theta, ~retraced),
        }
        return fields, retraced, jnp.ones((), real)

    @staticmethod
    def kept(static, state, step):
        """(x_from, G_from) of a retrace: the kept (x_{t−1}, G_{t−1}); the authors' convention rebuilds x_{t−1}
        as x_t + α_{t−1} G_{t−1}."""
        if static[1] == "authors_code":
            return _map(lambda p, h: p + state.alpha * h, step.params, state.g_prev), state.g_prev
        return state.x_prev, state.g_prev

    @staticmethod
    def taken(step, scale):
        """(x_from, G_from) of an accepted step: (x_t, G̃_t)."""
        return step.params, _map(lambda g: scale * g, step.grad)

    @classmethod
    def new_state(cls, state, fields, x_from, g_from):
        merged = {**fields, "x_prev": x_from, "g_prev": g_from}
        return ELRAState(**{name: merged.get(name, getattr(state, name)) for name in ELRAState._fields})

    @classmethod
    def step_F(cls, scalars, static, state, step):
        fields, retraced, scale = cls.advance(scalars, static, state, step)
        x_from, g_from = jax.lax.cond(retraced, lambda: cls.kept(static, state, step), lambda: cls.taken(step, scale))
        return cls.new_state(state, fields, x_from, g_from)

    @staticmethod
    def step_G(scalars, static, state, step):
        return _elra_update(state.x_prev, state.g_prev, step.params, state.alpha, scalars["weight_decay"])

    @classmethod
    def pure_step(cls, scalars, static, tree, step, params):
        """F, G and θ + G with one vector choice: an accepted step reads θ and g once after the reduction."""
        fields, retraced, scale = cls.advance(scalars, static, tree, step)
        alpha, decay = fields["alpha"], scalars["weight_decay"]

        def moved(x_from, g_from):
            update = _elra_update(x_from, g_from, step.params, alpha, decay)
            return x_from, g_from, _map(lambda p, u: p + u, params, update)

        x_from, g_from, params = jax.lax.cond(
            retraced, lambda: moved(*cls.kept(static, tree, step)), lambda: moved(*cls.taken(step, scale))
        )
        return cls.new_state(tree, fields, x_from, g_from), params


# --------------------------------------------------------------------------- elra_lean


def _lean_sums(x_prev, theta, grad, decay, dtype) -> jax.Array:
    """(⟨ω x_{t−1} − x_t, G_t⟩, ‖G_t‖²), the difference formed entry by entry as (x_{t−1} − x_t) + (ω − 1)
    x_{t−1} (exact for ω = 1 up to the stored x_t): per-leaf partial sums, one reduction round."""
    rows = _partial_sums(
        (jnp.sum(((x - p) + (decay - 1) * x) * g), jnp.sum(g * g))
        for x, p, g in zip(*(jax.tree_util.tree_leaves(tree) for tree in (x_prev, theta, grad)))
    )
    return _reduced(rows, 2, dtype)


def _lean_back(decay, x_prev, theta, alpha, rejected_alpha):
    """(E14) after a retrace: ω x_{t−1} − α_t (ω x_{t−1} − x_t)/α_rejected − x_t."""
    rate = _safe_divide(alpha, rejected_alpha, rejected_alpha != 0)
    return _map(lambda x, p: (decay * x - rate * (decay * x - p)) - p, x_prev, theta)


def _lean_forward(decay, theta, grad, rate):
    """(E12) ω x_t − α G̃_t − x_t as (ω − 1) x_t − α G̃_t, ``rate`` = α · the gradient scale."""
    return _map(lambda p, g: (decay - 1) * p - rate * g, theta, grad)


class LeanELRA(_ELRABase):
    """Sec. 3.6: only x_{t−1} is stored; ⟨G_{t−1}, G̃_t⟩ is (E13) evaluated as ⟨ω x_{t−1} − x_t, G̃_t⟩/α_{t−1}."""

    algo = "elra_lean"
    StateTree = LeanELRAState
    form_layouts = {"g_prev_sq": SCALAR, "grad_scale": SCALAR, "rejected_alpha": SCALAR}

    def initial_state(self, structure):
        common = self.common_initial_state(structure)
        real = common["alpha"].dtype
        return LeanELRAState(
            **common,
            g_prev_sq=jnp.zeros((), real),
            grad_scale=jnp.ones((), real),
            rejected_alpha=jnp.zeros((), real),
        )

    @classmethod
    def advance(cls, s, static, state, step):
        """Everything of F but x_{t−1}: (the new state's scalar fields, retraced)."""
        f, theta, t = step.loss, step.params, state.step + 1
        first = state.step == 0
        scale = cls.gradient_scale(s, state)
        retraced = ~first & cls.should_retrace(s, state, f)
        alpha_prev = state.alpha
        step_inner, raw_sq = _lean_sums(state.x_prev, theta, step.grad, s["weight_decay"], f.dtype)
        inner = scale * step_inner / alpha_prev  # (E13) ⟨G_{t−1}, G̃_t⟩
        adapted, adapted_limit = cls.adapted_alpha(s, alpha_prev, state.g_prev_sq, state.g_prev_sq - inner)
        g_sq = jnp.where(retraced, state.g_prev_sq, scale * scale * raw_sq)
        alpha = jnp.where(
            first,
            s["lr"],
            jnp.where(retraced, cls.retrace_alpha(alpha_prev, state.g_prev_sq, f, state.f_prev), adapted),
        )
        limit = jnp.where(first | retraced, NO_LIMIT, adapted_limit)
        alpha, limit = cls.limited_alpha(s, alpha, limit, jnp.sqrt(g_sq), t, retraced)
        fields = {
            "step": t,
            "alpha": alpha,
            "limit": limit.astype(COUNTER_DTYPE),
            "retraced": retraced.astype(COUNTER_DTYPE),
            "g_prev_sq": g_sq,
            "grad_scale": scale,
            "rejected_alpha": jnp.where(retraced, alpha_prev, 0),
            "f_prev": jnp.where(retraced, state.f_prev, f),
            "f_initial": jnp.where(first, f, state.f_initial),
            **cls.period_fields(s, static, state, f, theta, ~retraced),
        }
        return fields, retraced

    @staticmethod
    def new_state(state, fields, x_from):
        merged = {**fields, "x_prev": x_from}
        return LeanELRAState(**{name: merged.get(name, getattr(state, name)) for name in LeanELRAState._fields})

    @classmethod
    def step_F(cls, scalars, static, state, step):
        fields, retraced = cls.advance(scalars, static, state, step)
        return cls.new_state(state, fields, jax.lax.cond(retraced, lambda: state.x_prev, lambda: step.params))

    @staticmethod
    def step_G(scalars, static, state, step):
        decay = scalars["weight_decay"]
        return jax.lax.cond(
            state.retraced != 0,
            lambda: _lean_back(decay, state.x_prev, step.params, state.alpha, state.rejected_alpha),
            lambda: _lean_forward(decay, step.params, step.grad, state.alpha * state.grad_scale),
        )

    @classmethod
    def pure_step(cls, scalars, static, tree, step, params):
        """F, G and θ + G with one vector choice: an accepted step reads θ and g once after the reduction."""
        fields, retraced = cls.advance(scalars, static, tree, step)
        decay, alpha = scalars["weight_decay"], fields["alpha"]

        def moved(x_from, update):
            return x_from, _map(lambda p, u: p + u, params, update)

        def back():
            return moved(tree.x_prev, _lean_back(decay, tree.x_prev, step.params, alpha, fields["rejected_alpha"]))

        def forward():
            return moved(step.params, _lean_forward(decay, step.params, step.grad, alpha * fields["grad_scale"]))

        x_from, params = jax.lax.cond(retraced, back, forward)
        return cls.new_state(tree, fields, x_from), params


# --------------------------------------------------------------------------- constructors (the spec's signatures)

_NEEDS = frozenset({"grad", "params", "loss"})


def elra(
    lr=None,
    correction="paper",
    max_ratio=1e6,
    lr_min=1e-8,
    lr_max=1e6,
    crop=None,
    warmup_steps=0,
    warmup_floor=0.1,
    retrace=True,
    initial_retrace=True,
    retrace_sigmas=5.0,
    period=1,
    batch_control=False,
    initial_multiple=1,
    gradient_decay=False,
    weight_decay=1.0,
    boost=False,
    convention="paper",
    *,
    dtype="float64",
):
    """ELRA (paper 004, Sec. 3), the form that keeps G_{t−1}; ``lr`` (α_0) defaults to 1e-3, or to 1e-5
    with convention='authors_code'."""
    values = dict(locals())
    del values["dtype"]
    hp = checked.elra("elra", values)
    return ELRA(dtype, needs=_NEEDS, **hp)


def elra_lean(
    lr=1e-3,
    correction="paper",
    max_ratio=1e6,
    lr_min=1e-8,
    lr_max=1e6,
    crop=None,
    warmup_steps=0,
    warmup_floor=0.1,
    retrace=True,
    initial_retrace=True,
    retrace_sigmas=5.0,
    period=1,
    batch_control=False,
    initial_multiple=1,
    gradient_decay=False,
    weight_decay=1.0,
    boost=False,
    *,
    dtype="float64",
):
    """ELRA's memory-lean form (paper 004, Sec. 3.6): one stored vector, x_{t−1}."""
    values = dict(locals())
    del values["dtype"]
    return LeanELRA(dtype, needs=_NEEDS, **checked.elra("elra_lean", values))
