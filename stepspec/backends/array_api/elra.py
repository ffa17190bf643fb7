"""ELRA on the array API, spec/elra.md (tags E1–E14): ``elra`` (keeps G_{t−1}) and ``elra_lean`` (Sec. 3.6: one
stored vector), on parameter structures. Written from the spec page and the torch and jax designs; the reference
is not called.

A step is: the retrace decision (E7), on the host from the loss (a host float) and host state alone; the step's
inner products as per-leaf partial sums, stacked and combined by one ``reduce_sum`` round and read to the host
once; the α rules (E1–E6), the period statistics and the batch controller (E8–E9) in host floats. Elementwise
passes per parameter, in ``step``: one for the update, which also writes the stored G̃_t (and the authors' rebuilt
x_{t−1}); on an accepted step after the first one more, the entrywise difference the round reduces (G_{t−1} −
G̃_t, or the lean ω x_{t−1} − x_t); with ``boost`` one for the running sum x_sum and, when a period closes, one
for x_mean. F alone writes no vector without gradient decay, boost or an authors' retrace (x_{t−1}, G_{t−1} are
the observation's arrays); G is one pass.

Host reads (each a device synchronisation), per step, besides the core's finite checks of the observation:

- ``elra``: one read of the round's (k,) sums: at the first step (‖G_t‖²) only when the crop or the warm-up floor
  reads ‖G‖, else none; on a retrace (‖G_{t−1}‖²); otherwise (‖G_{t−1}‖², ⟨G_{t−1}, G_{t−1} − G̃_t⟩, and ‖G_t‖²
  when the crop or the floor reads it). ``convention='authors_code'``: from the second step on, (‖G_{t−1}‖²,
  ⟨G_{t−1}, G_{t−1} − G_t⟩), ‖G_{t−1}‖² alone on a retrace.
- ``elra_lean``: one read of (⟨ω x_{t−1} − x_t, G_t⟩, ‖G_t‖²), of ‖G_t‖² alone at the first step, none on a
  retrace (‖G_{t−1}‖² is in the state).

No k×k algebra: the round's sums are scalars. α, the losses, the period statistics and the authors' dampers are
float64 host scalars in every precision (``HOST``), as the spec's state table has them; ``means`` is a host
NumPy array in the working precision (``HostHistory``), which the controller reads without a device read and
which round-trips through ``init`` exactly; the counters and decisions are host ints.

Float32 decisions. The reductions run in the working precision (no float64 accumulator), so what keeps a step
within the tolerance policy is the form of the sums: the denominator of (E1) is reduced as ⟨G_{t−1}, G_{t−1} −
G̃_t⟩, the difference formed entry by entry, not as ‖G_{t−1}‖² − ⟨G̃_t, G_{t−1}⟩, two sums of size ‖G‖² that
cancel when successive gradients nearly agree (as the jax backend does). A zero gradient G_t = 0 makes that
difference G_{t−1} itself, so the denominator is ‖G_{t−1}‖² to the bit and the ratio exactly κ, as in the
reference; a repeated gradient makes it exactly 0, the cap case. The lean inner product (E13) is ⟨ω x_{t−1} −
x_t, G_t⟩ with the difference formed entry by entry as (x_{t−1} − x_t) + (ω − 1) x_{t−1} (spec/elra.md#backends).
The update is (x_from − x_t) + (ω − 1) x_from − α G_from, exactly −α G̃_t on an accepted step without weight
decay.

The stored x_{t−1} of an accepted step is the observation's ``params`` array itself (never written, as no array
of this backend is), not a copy.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import ObservationError, StateError
from .. import _hyperparameters as checked
from ._core import COUNTER, HOST, PARAM, WHOLE, Layout, Optimizer, as_arrays, over_leaves

# Which rule set α at the last step (state field ``limit``, spec/elra.md).
NO_LIMIT, RATIO_CAP, CROP, WARMUP_FLOOR, ABSOLUTE_BOUND = range(5)

GROWTH = 1.5  # (E9) the batch multiple's factor per controller update
HISTORY = 4  # (E9) period means kept, newest first: f̄_s … f̄_{s−3}
PAPER_INITIAL_LR = 1e-3  # Sec. 3.1: α_0 = 10⁻³
AUTHORS_INITIAL_LR = 1e-5  # convention='authors_code': the January-2024 code starts at 10⁻⁵
AUTHORS_GROWTH_DAMPER = 855000.0  # authors_code: D_0, γ_max = 10⁶/(1 + D)
AUTHORS_ERROR_DAMPER = 500000.0  # authors_code: E_0, and where a rising step pins E once E ≥ E_0
AUTHORS_SMALL_DIMENSION = 20  # authors_code: n ≤ 20 has no correction factor and no 1.1 f(x_0) start rule

_NEEDS = frozenset({"grad", "params", "loss"})


class HostHistory(Layout):
    """``means`` (4,): a host NumPy array in the working precision, read by the batch controller without a device
    read; the working precision makes it round-trip through ``init`` exactly."""

    def flat(self, stored, structure):
        return stored

    def store(self, name, value, structure, default):
        (array,), _ = as_arrays(name, [value], StateError, structure.ns)
        if tuple(array.shape) != default.shape:
            raise StateError(name, f"must have shape {default.shape}, got {tuple(array.shape)}")
        return np.array(structure.ns.to_numpy(array), dtype=default.dtype)


# --------------------------------------------------------------------------- the elementwise passes


def _pass_scaled(xp):
    return lambda x, scale: scale * x  # (E10) G̃ = G · m_0/m


def _pass_denominator_direction(xp):
    return lambda h, g, scale: h - scale * g  # (E1) G_{t−1} − G̃_t, entry by entry


def _pass_sum(xp):
    return lambda total, x: total + x  # (E11) the period's running sum of accepted iterates


def _pass_mean(xp):
    return lambda total, count: total / count  # (E11) x̄


def _update_from(x, h, theta, alpha, decay_less_one):
    """(E12) ω x_from − α G_from − x_t, as (x_from − x_t) + (ω − 1) x_from − α G_from."""
    return ((x - theta) + decay_less_one * x) - alpha * h


def _pass_update_from(xp):
    return _update_from


def _pass_step_from(xp):
    return lambda params, x, h, theta, alpha, decay_less_one: params + _update_from(x, h, theta, alpha, decay_less_one)


def _pass_step_taken(xp):
    def step(params, theta, g, scale, alpha, decay_less_one):
        h = scale * g  # (E10) G̃_t, stored as G_{t−1}
        return h, params + _update_from(theta, h, theta, alpha, decay_less_one)  # (E12) from x_t along G̃_t

    return step


def _pass_rebuilt(xp):
    return lambda theta, h, alpha: theta + alpha * h  # authors_code: x_{t−1} rebuilt as x_t + α_{t−1} G_{t−1}


def _pass_step_rebuilt(xp):
    def step(params, theta, h, alpha_prev, alpha, decay_less_one):
        x = theta + alpha_prev * h
        return x, params + _update_from(x, h, theta, alpha, decay_less_one)

    return step


def _lean_difference(x, theta, decay_less_one):
    """ω x_{t−1} − x_t entry by entry, as (x_{t−1} − x_t) + (ω − 1) x_{t−1}."""
    return (x - theta) + decay_less_one * x


def _pass_lean_difference(xp):
    return _lean_difference


def _lean_forward(theta, g, rate, decay_less_one):
    """(E12) ω x_t − α G̃_t − x_t as (ω − 1) x_t − rate·G_t, rate = α · the gradient scale."""
    return decay_less_one * theta - rate * g


def _lean_back(x, theta, rate, decay):
    """(E14) ω x_{t−1} − α_t (ω x_{t−1} − x_t)/α_rejected − x_t, rate = α_t/α_rejected."""
    start = decay * x
    return (start - rate * (start - theta)) - theta


def _pass_lean_forward(xp):
    return _lean_forward


def _pass_lean_back(xp):
    return _lean_back


def _pass_lean_step_forward(xp):
    return lambda params, theta, g, rate, decay_less_one: params + _lean_forward(theta, g, rate, decay_less_one)


def _pass_lean_step_back(xp):
    return lambda params, x, theta, rate, decay: params + _lean_back(x, theta, rate, decay)


# --------------------------------------------------------------------------- the one reduction round


def _flat(xp, leaf):
    return xp.reshape(leaf, (-1,))


def _reduced(ns, rows: list, names: tuple[str, ...]) -> dict[str, float]:
    """Per-leaf rows of partial sums (one entry per name), combined by one ``reduce_sum`` round and read to the
    host once: the step's host synchronisation."""
    if not names:
        return {}
    if not rows:  # no parameters: every sum is empty
        return dict.fromkeys(names, 0.0)
    return dict(zip(names, ns.to_numpy(ns.reduce_sum(rows)).tolist()))


# --------------------------------------------------------------------------- what both forms share


class _ELRABase(Optimizer):
    """The α rules (E1–E6), the retrace rule (E7), the period statistics, the batch controller (E8–E10) and
    boosting (E11), on the host; x_sum and x_mean on the device."""

    common_layouts = {
        "step": COUNTER,
        "alpha": HOST,
        "x_prev": PARAM,
        "f_prev": HOST,
        "f_initial": HOST,
        "retraced": COUNTER,
        "limit": COUNTER,
        "periods": COUNTER,
        "period_batches": COUNTER,
        "period_count": COUNTER,
        "period_mean": HOST,
        "period_m2": HOST,
        "last_mean": HOST,
        "last_std": HOST,
        "means": HostHistory(),
        "updates": COUNTER,
        "multiple": COUNTER,
    }
    form_layouts: dict[str, Layout]

    def __init__(self, ns, **hp):
        super().__init__(ns, needs=_NEEDS, **hp)
        boosted = PARAM if self.boost else WHOLE  # x_sum, x_mean: n, or an empty vector without boost
        self.layouts = {**self.common_layouts, **self.form_layouts, "x_sum": boosted, "x_mean": boosted}

    def common_initial_state(self, structure, params) -> dict:
        if self.boost:
            x_sum, x_mean = structure.zeros(), structure.zeros()
        else:
            x_sum = x_mean = self.ns.zeros((0,))
        return {
            "step": 0,
            "alpha": self.lr,
            "x_prev": params,
            "f_prev": 0.0,
            "f_initial": 0.0,
            "retraced": 0,
            "limit": NO_LIMIT,
            "periods": 0,
            "period_batches": 0,
            "period_count": 0,
            "period_mean": 0.0,
            "period_m2": 0.0,
            "last_mean": 0.0,
            "last_std": 0.0,
            "means": np.zeros(HISTORY, dtype=self.ns.dtype),
            "updates": 0,
            "multiple": self.initial_multiple,
            "x_sum": x_sum,
            "x_mean": x_mean,
        }

    @property
    def decay_less_one(self) -> float:
        return self.weight_decay - 1.0

    # -- α (host floats) --------------------------------------------------------------------

    def kappa(self, alpha: float) -> float:
        """(E2) κ(α_{t−1}) = 1 + 0.15 (1 + α_{t−1}²)⁻¹, or 1 without the correction."""
        return 1.0 + 0.15 / (1.0 + alpha * alpha) if self.correction == "paper" else 1.0

    def adapted_alpha(self, alpha: float, g_prev_sq: float, denominator: float) -> tuple[float, int]:
        """(E1, E3) α κ ‖G_{t−1}‖² / D, D = ‖G_{t−1}‖² − ⟨G̃_t, G_{t−1}⟩, the ratio capped at γ_max; a zero last
        gradient keeps α (nothing learned about the curvature), D ≤ 0 is the cap case."""
        if g_prev_sq == 0.0:
            return alpha, NO_LIMIT
        if denominator <= 0.0:
            return alpha * self.max_ratio, RATIO_CAP
        ratio = self.kappa(alpha) * g_prev_sq / denominator
        if ratio > self.max_ratio:
            return alpha * self.max_ratio, RATIO_CAP
        return alpha * ratio, NO_LIMIT

    @staticmethod
    def retrace_alpha(alpha: float, g_prev_sq: float, f: float, f_prev: float) -> float:
        """(E7) α · ½α‖G_{t−1}‖²/(f_t − f_{t−1} + α‖G_{t−1}‖²), the factor at most ½; halve when the parabola has no
        minimum."""
        denominator = f - f_prev + alpha * g_prev_sq
        if g_prev_sq == 0.0 or denominator <= 0.0:
            return 0.5 * alpha
        return alpha * min(0.5, 0.5 * alpha * g_prev_sq / denominator)

    def limited_alpha(self, alpha: float, limit: int, norm: float, t: int, retraced: bool) -> tuple[float, int]:
        """(E4) crop, (E5) warm-up floor (not on a retrace), (E6) absolute bounds, in that order; ``norm`` is ‖G‖
        of the gradient the step uses."""
        if self.crop is not None and alpha * norm > self.crop:
            alpha, limit = self.crop / norm, CROP
        if t <= self.warmup_steps and not retraced and norm > 0.0 and alpha * norm < self.warmup_floor:
            alpha, limit = self.warmup_floor / norm, WARMUP_FLOOR
        bounded = min(max(alpha, self.lr_min), self.lr_max)
        return (bounded, ABSOLUTE_BOUND) if bounded != alpha else (alpha, limit)

    def needs_norm(self, t: int) -> bool:
        """Whether (E4, E5) read ‖G‖ at step t."""
        return self.crop is not None or t <= self.warmup_steps

    def should_retrace(self, s: dict, f: float) -> bool:
        """(E7) f above the last period's f̄ + kσ; before the first period closes, above f(x_0) + 0.1|f(x_0)|."""
        if not self.retrace:
            return False
        if s["periods"] > 0:
            return f > s["last_mean"] + self.retrace_sigmas * s["last_std"]
        return self.initial_retrace and f > s["f_initial"] + 0.1 * abs(s["f_initial"])

    def gradient_scale(self, s: dict) -> float:
        """(E10) G̃ = G · m_0/m_t, m_t the multiple this observation averaged."""
        return self.initial_multiple / s["multiple"] if self.gradient_decay else 1.0

    # -- periods -------------------------------------------------------------------------------

    def period_fields(self, state, f: float, theta: list, accepted: bool) -> dict:
        """(E8, E9, E11) Count this step's minimal batches, and its loss and point when accepted; close the period
        once it has consumed ``period`` minimal batches and holds an accepted loss."""
        s = state.stored
        batches, count, mean, m2, x_sum = (
            s["period_batches"] + s["multiple"],
            s["period_count"],
            s["period_mean"],
            s["period_m2"],
            s["x_sum"],
        )
        if accepted:
            count += 1
            delta = f - mean
            mean += delta / count
            m2 += delta * (f - mean)  # Welford
            if self.boost:
                x_sum = over_leaves(self.ns.fused(_pass_sum), [x_sum, theta])
        fields = {"period_batches": batches, "period_count": count, "period_mean": mean, "period_m2": m2}
        fields["x_sum"] = x_sum
        if batches < self.period or count == 0:
            return fields
        std = math.sqrt(m2 / count)  # population σ
        means = np.concatenate([np.asarray([mean], s["means"].dtype), s["means"][:-1]])
        periods = s["periods"] + 1
        fields.update(
            periods=periods,
            period_batches=0,
            period_count=0,
            period_mean=0.0,
            period_m2=0.0,
            last_mean=mean,
            last_std=std,
            means=means,
        )
        if self.boost:
            fields["x_mean"] = over_leaves(self.ns.fused(_pass_mean), [x_sum], float(count))
            fields["x_sum"] = state.structure.zeros()
        if self.batch_control and self.batch_triggered(means.tolist(), std, periods):
            fields["updates"] = s["updates"] + 1
            fields["multiple"] = self.multiple_after(fields["updates"])
        return fields

    @staticmethod
    def batch_triggered(means: list[float], std: float, periods: int) -> bool:
        """(E9) on f̄_s = means[0], f̄_{s−1} = means[1], … (as stored) and σ_s."""
        rising = periods >= 2 and means[0] > means[1] + std / 10  # (1)
        noisy = std > 0.5 * abs(means[0])  # (2) σ_s/f̄_s > ½
        stalled = periods >= 4 and means[3] < min(means[0], means[1], means[2])  # (3)
        return rising or noisy or stalled

    def multiple_after(self, updates: int) -> int:
        """(E9) cascades: exponent k − 2⌊k/3⌋ after k updates; m_0 · 1.5^e rounded half up, at least 1."""
        exponent = updates - 2 * (updates // 3)
        return max(1, math.floor(self.initial_multiple * GROWTH**exponent + 0.5))


# --------------------------------------------------------------------------- elra


class ELRA(_ELRABase):
    algo = "elra"
    form_layouts = {"g_prev": PARAM, "growth_damper": HOST, "error_damper": HOST, "relaxed_best": HOST}

    def initial_state(self, structure, params):
        return {
            **self.common_initial_state(structure, params),
            "g_prev": structure.zeros(),
            "growth_damper": AUTHORS_GROWTH_DAMPER,
            "error_damper": AUTHORS_ERROR_DAMPER,
            "relaxed_best": 0.0,
        }

    def sums(self, s: dict, step, scale: float, names: tuple[str, ...]) -> dict[str, float]:
        """The named sums of a step in one round and one read: ``g_prev_sq`` ‖G_{t−1}‖², ``denominator``
        ⟨G_{t−1}, G_{t−1} − G̃_t⟩ (entry by entry), ``g_sq`` ‖G_t‖²."""
        if not names:
            return {}
        xp, direction = self.ns.xp, self.ns.fused(_pass_denominator_direction)
        rows = []
        for h, g in zip(s["g_prev"], step.grad):
            h, g = _flat(xp, h), _flat(xp, g)
            pairs = {"g_prev_sq": (h, h), "g_sq": (g, g)}
            if "denominator" in names:
                pairs["denominator"] = (h, direction(h, g, scale))
            rows.append(xp.stack([xp.vecdot(*pairs[name]) for name in names]))
        return _reduced(self.ns, rows, names)

    def advance(self, state, step) -> tuple[dict, str, float]:
        """Everything of F but the vectors x_{t−1}, G_{t−1}: (the changed host fields, how the step moves:
        "taken" from x_t along G̃_t, "kept" back from x_{t−1} along G_{t−1}, "rebuilt" (authors_code) from x_t +
        α_{t−1} G_{t−1}, and the gradient scale of E10)."""
        if self.convention == "authors_code":
            return self.advance_authors_code(state, step)
        s, f = state.stored, step.loss
        t, scale, first = s["step"] + 1, self.gradient_scale(s), s["step"] == 0
        retraced = not first and self.should_retrace(s, f)
        norm_sum = ("g_sq",) if self.needs_norm(t) else ()
        names = norm_sum if first else ("g_prev_sq",) if retraced else ("g_prev_sq", "denominator", *norm_sum)
        sums = self.sums(s, step, scale, names)
        limit = NO_LIMIT
        if first:  # α_0: nothing to adapt yet
            alpha, norm = self.lr, scale * math.sqrt(sums.get("g_sq", 0.0))
        elif retraced:  # (E7)
            alpha = self.retrace_alpha(s["alpha"], sums["g_prev_sq"], f, s["f_prev"])
            norm = math.sqrt(sums["g_prev_sq"])
        else:  # (E1–E3)
            alpha, limit = self.adapted_alpha(s["alpha"], sums["g_prev_sq"], sums["denominator"])
            norm = scale * math.sqrt(sums.get("g_sq", 0.0))
        alpha, limit = self.limited_alpha(alpha, limit, norm, t, retraced)
        fields = {
            "step": t,
            "alpha": alpha,
            "limit": limit,
            "retraced": int(retraced),
            "f_prev": s["f_prev"] if retraced else f,
            "f_initial": f if first else s["f_initial"],
            **self.period_fields(state, f, step.params, accepted=not retraced),
        }
        return fields, "kept" if retraced else "taken", scale

    def check_F(self, state, step):
        # the authors' √T: the January code raises on a negative relaxed best, and so does the convention
        s = state.stored
        if self.convention == "authors_code" and s["step"] >= 1 and s["relaxed_best"] < 0.0:
            raise ObservationError(
                "loss",
                "convention='authors_code' takes √ of the relaxed best loss, which is negative here; the "
                "January-2024 code fails the same way (spec/elra.md#authors-code): shift the loss by a constant",
            )

    def _F(self, state, step):
        fields, move, scale = self.advance(state, step)
        s, ns = state.stored, self.ns
        if move == "taken":
            g_from = step.grad if scale == 1.0 else over_leaves(ns.fused(_pass_scaled), [step.grad], scale)
            fields.update(x_prev=step.params, g_prev=g_from)
        elif move == "rebuilt":
            fields["x_prev"] = over_leaves(ns.fused(_pass_rebuilt), [step.params, s["g_prev"]], s["alpha"])
        return fields

    def _G(self, state, step):
        s = state.stored
        return over_leaves(
            self.ns.fused(_pass_update_from),
            [s["x_prev"], s["g_prev"], step.params],
            s["alpha"],
            self.decay_less_one,
        )

    def _step(self, state, step, params):
        fields, move, scale = self.advance(state, step)
        s, ns, alpha = state.stored, self.ns, fields["alpha"]
        if move == "taken":
            g_from, new = over_leaves(
                ns.fused(_pass_step_taken),
                [params, step.params, step.grad],
                scale,
                alpha,
                self.decay_less_one,
                outputs=2,
            )
            fields.update(x_prev=step.params, g_prev=g_from)
        elif move == "rebuilt":
            fields["x_prev"], new = over_leaves(
                ns.fused(_pass_step_rebuilt),
                [params, step.params, s["g_prev"]],
                s["alpha"],
                alpha,
                self.decay_less_one,
                outputs=2,
            )
        else:
            new = over_leaves(
                ns.fused(_pass_step_from),
                [params, s["x_prev"], s["g_prev"], step.params],
                alpha,
                self.decay_less_one,
            )
        return fields, new

    # -- the authors' January-2024 code (spec/elra.md#authors-code) -----------------------------

    def advance_authors_code(self, state, step) -> tuple[dict, str, float]:
        """The January-2024 step on the host: its retrace tolerance, growth damper and error damper; the first
        call records f_0 and steps with the initial α."""
        s, f, n = state.stored, step.loss, state.structure.n
        t = s["step"] + 1
        if t == 1:
            fields = {"step": 1, "alpha": s["alpha"], "f_prev": f, "f_initial": f, "relaxed_best": f}
            return {**fields, **self.period_fields(state, f, step.params, accepted=True)}, "taken", 1.0
        best, error_damper, alpha_prev = s["relaxed_best"], s["error_damper"], s["alpha"]
        tolerance = 25.0 + (2500.0 + 71.0 * math.sqrt(best)) / (1.0 + math.sqrt(error_damper))
        start = n <= AUTHORS_SMALL_DIMENSION or f < 1.1 * s["f_initial"]
        retraced = not (start and f < 1.1 * tolerance * best)
        damper = s["growth_damper"]
        if not retraced:
            damper /= 3.9
        elif damper > 1.0:
            damper = 16.0 * damper if damper < 62500.0 else AUTHORS_GROWTH_DAMPER
        else:
            damper += 16.0
        cap = 1e6 / (1.0 + damper)
        sums = self.sums(s, step, 1.0, ("g_prev_sq",) if retraced else ("g_prev_sq", "denominator"))
        g_prev_sq = sums["g_prev_sq"]
        if retraced:
            rise = f - s["f_prev"] + alpha_prev * g_prev_sq
            # the code divides unguarded; stepspec halves at an exact 0 instead of raising
            alpha = alpha_prev * 0.5 * alpha_prev * g_prev_sq / rise if rise != 0.0 else 0.5 * alpha_prev
        else:
            shrink = sums["denominator"] / g_prev_sq if g_prev_sq > 0.0 else 1.0
            if cap * shrink < 1.0:
                alpha = alpha_prev * cap
            elif n <= AUTHORS_SMALL_DIMENSION:
                alpha = alpha_prev / shrink
            else:
                loss_term = max(0.0, min(0.7, ((2.35 / s["f_initial"]) ** 2 * best) ** 0.8))
                alpha = alpha_prev / (shrink * (1.0 - 0.14 * loss_term))
        alpha = min(max(alpha, self.lr_min), self.lr_max)
        worse = not retraced and f > s["f_prev"]
        if not worse:
            error_damper /= 1.69
        elif error_damper < 1.0:
            error_damper += 16.0
        elif error_damper < AUTHORS_ERROR_DAMPER:
            error_damper *= 16.0  # tested before multiplying: E can reach just under 16 E_0
        else:
            error_damper = AUTHORS_ERROR_DAMPER
        fields = {
            "step": t,
            "alpha": alpha,
            "retraced": int(retraced),
            "limit": ABSOLUTE_BOUND if alpha in (self.lr_min, self.lr_max) else NO_LIMIT,
            "f_prev": s["f_prev"] if retraced else f,
            "growth_damper": damper,
            "error_damper": error_damper,
            "relaxed_best": f if f < best else 1.1 * best,
            **self.period_fields(state, f, step.params, accepted=not retraced),
        }
        return fields, "rebuilt" if retraced else "taken", 1.0


# --------------------------------------------------------------------------- elra_lean


class LeanELRA(_ELRABase):
    """Sec. 3.6: only x_{t−1} is stored; (E13) is evaluated as ⟨ω x_{t−1} − x_t, G_t⟩/α_{t−1}, the difference
    formed entry by entry."""

    algo = "elra_lean"
    form_layouts = {"g_prev_sq": HOST, "grad_scale": HOST, "rejected_alpha": HOST}

    def initial_state(self, structure, params):
        return {
            **self.common_initial_state(structure, params),
            "g_prev_sq": 0.0,
            "grad_scale": 1.0,
            "rejected_alpha": 0.0,
        }

    def sums(self, s: dict, step, names: tuple[str, ...]) -> dict[str, float]:
        """The named sums of a step in one round and one read: ``step_inner`` ⟨ω x_{t−1} − x_t, G_t⟩, ``g_sq``
        ‖G_t‖²."""
        if not names:
            return {}
        xp, difference = self.ns.xp, self.ns.fused(_pass_lean_difference)
        rows = []
        for x, p, g in zip(s["x_prev"], step.params, step.grad):
            g = _flat(xp, g)
            pairs = {"g_sq": (g, g)}
            if "step_inner" in names:
                pairs["step_inner"] = (_flat(xp, difference(x, p, self.decay_less_one)), g)
            rows.append(xp.stack([xp.vecdot(*pairs[name]) for name in names]))
        return _reduced(self.ns, rows, names)

    def advance(self, state, step) -> tuple[dict, bool]:
        """Everything of F but x_{t−1}: (the changed host fields, retraced)."""
        s, f = state.stored, step.loss
        t, scale, first = s["step"] + 1, self.gradient_scale(s), s["step"] == 0
        retraced = not first and self.should_retrace(s, f)
        alpha_prev, limit = s["alpha"], NO_LIMIT
        sums = self.sums(s, step, ("g_sq",) if first else () if retraced else ("step_inner", "g_sq"))
        if first:
            alpha, g_sq = self.lr, scale * scale * sums["g_sq"]
        elif retraced:  # (E7, E14)
            alpha, g_sq = self.retrace_alpha(alpha_prev, s["g_prev_sq"], f, s["f_prev"]), s["g_prev_sq"]
        else:
            inner = scale * sums["step_inner"] / alpha_prev  # (E13) ⟨G_{t−1}, G̃_t⟩
            alpha, limit = self.adapted_alpha(alpha_prev, s["g_prev_sq"], s["g_prev_sq"] - inner)
            g_sq = scale * scale * sums["g_sq"]
        alpha, limit = self.limited_alpha(alpha, limit, math.sqrt(g_sq), t, retraced)
        fields = {
            "step": t,
            "alpha": alpha,
            "limit": limit,
            "retraced": int(retraced),
            "g_prev_sq": g_sq,
            "grad_scale": scale,
            "rejected_alpha": alpha_prev if retraced else 0.0,
            "f_prev": s["f_prev"] if retraced else f,
            "f_initial": f if first else s["f_initial"],
            **self.period_fields(state, f, step.params, accepted=not retraced),
        }
        return fields, retraced

    @staticmethod
    def back_rate(alpha: float, rejected_alpha: float) -> float:
        """α_t/α_rejected of (E14); an infinite rate where a state sets α_rejected = 0, as the reference's
        division gives (entries ±∞, or NaN where ω x_{t−1} = x_t)."""
        return alpha / rejected_alpha if rejected_alpha != 0.0 else math.copysign(math.inf, alpha)

    def _F(self, state, step):
        fields, retraced = self.advance(state, step)
        if not retraced:
            fields["x_prev"] = step.params
        return fields

    def _G(self, state, step):
        s, ns = state.stored, self.ns
        if s["retraced"]:
            rate = self.back_rate(s["alpha"], s["rejected_alpha"])
            return over_leaves(ns.fused(_pass_lean_back), [s["x_prev"], step.params], rate, self.weight_decay)
        rate = s["alpha"] * s["grad_scale"]
        return over_leaves(ns.fused(_pass_lean_forward), [step.params, step.grad], rate, self.decay_less_one)

    def _step(self, state, step, params):
        fields, retraced = self.advance(state, step)
        ns = self.ns
        if retraced:
            rate = self.back_rate(fields["alpha"], fields["rejected_alpha"])
            new = over_leaves(
                ns.fused(_pass_lean_step_back), [params, state.stored["x_prev"], step.params], rate, self.weight_decay
            )
            return fields, new
        rate = fields["alpha"] * fields["grad_scale"]
        new = over_leaves(
            ns.fused(_pass_lean_step_forward), [params, step.params, step.grad], rate, self.decay_less_one
        )
        return {**fields, "x_prev": step.params}, new


# --------------------------------------------------------------------------- constructors (the spec's signatures)


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
    ns,
):
    """ELRA (paper 004, Sec. 3), the form that keeps G_{t−1}; ``lr`` (α_0) defaults to 1e-3, or to 1e-5 with
    convention='authors_code'."""
    if lr is None:
        lr = AUTHORS_INITIAL_LR if convention == "authors_code" else PAPER_INITIAL_LR
    values = dict(locals())
    del values["ns"]
    return ELRA(ns, **checked.elra("elra", values))


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
    ns,
):
    """ELRA's memory-lean form (paper 004, Sec. 3.6): one stored vector, x_{t−1}."""
    values = dict(locals())
    del values["ns"]
    return LeanELRA(ns, **checked.elra("elra_lean", values))
