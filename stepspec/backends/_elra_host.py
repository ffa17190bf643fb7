"""ELRA's host-side rules (spec/elra.md, tags E1–E11), shared by the torch and array-API backends: α, the retrace
decision, the limits, the period statistics, the batch controller and the authors' dampers, all on float64 host
scalars in every precision, as the spec's state table has them. What is array work (the step's reductions, the
elementwise passes, boosting's running sum) stays in each backend: it hands in the step's sums through a
``reduce(names, scale)`` callback that returns host floats, and a ``shifted_means`` method for its stored history.
The constants are the reference's, defined once there next to the rules they belong to.
"""

from __future__ import annotations

import math

from ..errors import ObservationError
from ..reference.elra import (
    ABSOLUTE_BOUND,
    AUTHORS_ERROR_DAMPER,
    AUTHORS_GROWTH_DAMPER,
    AUTHORS_SMALL_DIMENSION,
    CROP,
    GROWTH,
    NO_LIMIT,
    RATIO_CAP,
    WARMUP_FLOOR,
)

LEAN_SUMS = ("step_inner", "g_sq")
"""``elra_lean``'s reduced scalars: ⟨ω x_{t−1} − x_t, G_t⟩ (E13) and ‖G_t‖²."""


COMMON_FIELDS = {
    "step": "counter",
    "alpha": "host",
    "x_prev": "param",
    "f_prev": "host",
    "f_initial": "host",
    "retraced": "counter",
    "limit": "counter",
    "periods": "counter",
    "period_batches": "counter",
    "period_count": "counter",
    "period_mean": "host",
    "period_m2": "host",
    "last_mean": "host",
    "last_std": "host",
    "means": "history",
    "updates": "counter",
    "multiple": "counter",
}
"""Both forms' state fields but boosting's and what each field is: a host int ("counter"), a float64 host scalar
("host"), a parameter structure ("param"), the (HISTORY,) period means in the working precision ("history")."""
ELRA_FIELDS = {"g_prev": "param", "growth_damper": "host", "error_damper": "host", "relaxed_best": "host"}
"""``elra``'s own state fields, as ``COMMON_FIELDS``."""
LEAN_FIELDS = {"g_prev_sq": "host", "grad_scale": "host", "rejected_alpha": "host"}
"""``elra_lean``'s own state fields, as ``COMMON_FIELDS``."""


def authors_relaxed_best(s: dict) -> float:
    """The relaxed best loss T whose √ the authors' step takes; a negative T is the observation's fault."""
    best = s["relaxed_best"]
    if best < 0.0:
        raise ObservationError(
            "loss",
            "convention='authors_code' takes √ of the relaxed best loss, which is negative here; the "
            "January-2024 code fails the same way (spec/elra.md#authors-code): shift the loss by a constant",
        )
    return best


class HostRules:
    """The host part of both forms, on the optimizer's checked hyperparameters; a backend's optimizer inherits it
    and defines ``own_fields`` (``ELRA_FIELDS`` or ``LEAN_FIELDS``) and ``shifted_means(means, mean)``: its stored
    (HISTORY,) history with ``mean`` pushed in front."""

    own_fields: dict[str, str]  # the form's own state fields: ``ELRA_FIELDS`` or ``LEAN_FIELDS``

    def common_host_state(self) -> dict:
        """The initial host scalars of both forms."""
        return {
            "step": 0,
            "alpha": self.lr,
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
            "updates": 0,
            "multiple": self.initial_multiple,
        }

    def state_layouts(self, counter, host, param, history, whole) -> dict:
        """The state's layouts (``COMMON_FIELDS``, the form's ``own_fields``), from the backend's layout of each
        kind; boosting's x_sum and x_mean are parameter structures with ``boost``, else empty (``whole``)."""
        kinds = {"counter": counter, "host": host, "param": param, "history": history}
        boosted = param if self.boost else whole
        fields = {**COMMON_FIELDS, **self.own_fields}
        return {**{name: kinds[kind] for name, kind in fields.items()}, "x_sum": boosted, "x_mean": boosted}

    @staticmethod
    def elra_host_state() -> dict:
        """``elra``'s own initial host scalars: the authors' dampers D_0, E_0 and the relaxed best loss."""
        return {"growth_damper": AUTHORS_GROWTH_DAMPER, "error_damper": AUTHORS_ERROR_DAMPER, "relaxed_best": 0.0}

    @staticmethod
    def lean_host_state() -> dict:
        """``elra_lean``'s own initial host scalars."""
        return {"g_prev_sq": 0.0, "grad_scale": 1.0, "rejected_alpha": 0.0}

    # -- α ---------------------------------------------------------------------------------------

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

    # -- one step's host fields -----------------------------------------------------------------------

    def elra_fields(self, s: dict, f: float, reduce) -> tuple[dict, float]:
        """``elra``'s F but the vectors x_{t−1}, G_{t−1} and the period: the retrace decision (E7), the step's
        one round ``reduce(names, scale)`` (of ``g_prev_sq`` ‖G_{t−1}‖², ``denominator``
        D = ‖G_{t−1}‖² − ⟨G̃_t, G_{t−1}⟩ of (E1), ``g_sq`` ‖G_t‖²), α (E1–E7), the counters. Returns (the changed host
        fields, the gradient scale of E10)."""
        t, scale, first = s["step"] + 1, self.gradient_scale(s), s["step"] == 0
        retraced = not first and self.should_retrace(s, f)
        norm_sum = ("g_sq",) if self.needs_norm(t) else ()
        names = norm_sum if first else ("g_prev_sq",) if retraced else ("g_prev_sq", "denominator", *norm_sum)
        sums = reduce(names, scale) if names else {}
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
        return {
            "step": t,
            "alpha": alpha,
            "limit": limit,
            "retraced": int(retraced),
            "f_prev": s["f_prev"] if retraced else f,
            "f_initial": f if first else s["f_initial"],
        }, scale

    def lean_fields(self, s: dict, f: float, reduce) -> dict:
        """``elra_lean``'s F but x_{t−1} and the period: the retrace decision, the step's one round
        ``reduce(names, scale)`` of ``LEAN_SUMS`` (none on a retrace: ‖G_{t−1}‖² is in the state), α (E1–E7, E13),
        the counters."""
        t, scale, first = s["step"] + 1, self.gradient_scale(s), s["step"] == 0
        retraced = not first and self.should_retrace(s, f)
        alpha_prev, limit = s["alpha"], NO_LIMIT
        names = ("g_sq",) if first else () if retraced else LEAN_SUMS
        sums = reduce(names, scale) if names else {}
        if first:
            alpha, g_sq = self.lr, scale * scale * sums["g_sq"]
        elif retraced:  # (E7, E14)
            alpha, g_sq = self.retrace_alpha(alpha_prev, s["g_prev_sq"], f, s["f_prev"]), s["g_prev_sq"]
        else:
            inner = scale * sums["step_inner"] / alpha_prev  # (E13) ⟨G_{t−1}, G̃_t⟩
            alpha, limit = self.adapted_alpha(alpha_prev, s["g_prev_sq"], s["g_prev_sq"] - inner)
            g_sq = scale * scale * sums["g_sq"]
        alpha, limit = self.limited_alpha(alpha, limit, math.sqrt(g_sq), t, retraced)
        return {
            "step": t,
            "alpha": alpha,
            "limit": limit,
            "retraced": int(retraced),
            "g_prev_sq": g_sq,
            "grad_scale": scale,
            "rejected_alpha": alpha_prev if retraced else 0.0,
            "f_prev": s["f_prev"] if retraced else f,
            "f_initial": f if first else s["f_initial"],
        }

    def authors_fields(self, s: dict, f: float, n: int, reduce) -> dict:
        """The January-2024 step (spec/elra.md#authors-code) but the vectors and the period: its retrace tolerance,
        growth damper and error damper, with the step's one round ``reduce(names, 1.0)`` (as ``elra_fields``'s). The
        first call records f_0 and steps with the initial α."""
        t = s["step"] + 1
        if t == 1:
            return {"step": 1, "alpha": s["alpha"], "f_prev": f, "f_initial": f, "relaxed_best": f}
        best, error_damper, alpha_prev = authors_relaxed_best(s), s["error_damper"], s["alpha"]
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
        sums = reduce(("g_prev_sq",) if retraced else ("g_prev_sq", "denominator"), 1.0)
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
        return {
            "step": t,
            "alpha": alpha,
            "retraced": int(retraced),
            "limit": ABSOLUTE_BOUND if alpha in (self.lr_min, self.lr_max) else NO_LIMIT,
            "f_prev": s["f_prev"] if retraced else f,
            "growth_damper": damper,
            "error_damper": error_damper,
            "relaxed_best": f if f < best else 1.1 * best,
        }

    # -- periods ------------------------------------------------------------------------------------

    def period_host_fields(self, s: dict, f: float, accepted: bool) -> tuple[dict, int]:
        """(E8, E9) Count this step's minimal batches, and its loss when accepted; close the period once it has
        consumed ``period`` minimal batches and holds an accepted loss. Returns (the changed host fields, the
        number of accepted points the closing period averaged, 0 when it stays open): boosting's (E11) sums are
        the backend's."""
        batches, count = s["period_batches"] + s["multiple"], s["period_count"]
        mean, m2 = s["period_mean"], s["period_m2"]
        if accepted:
            count += 1
            delta = f - mean
            mean += delta / count
            m2 += delta * (f - mean)  # Welford
        fields = {"period_batches": batches, "period_count": count, "period_mean": mean, "period_m2": m2}
        if batches < self.period or count == 0:
            return fields, 0
        std = math.sqrt(m2 / count)  # population σ
        means = self.shifted_means(s["means"], mean)
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
        if self.batch_control and self.batch_triggered(means.tolist(), std, periods):
            fields["updates"] = s["updates"] + 1
            fields["multiple"] = self.multiple_after(fields["updates"])
        return fields, count

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
