"""ELRA in torch, spec/elra.md (tags E1–E14): ``elra`` (keeps G_{t−1}) and ``elra_lean`` (Sec. 3.6: one stored
vector), on parameter structures. Written from the spec page; the NumPy reference is not called.

A step is: the retrace decision (E7), on the host from the loss and host state alone; the step's inner
products and norms as per-tensor partial sums, combined by ``_core.reduce_sum`` in one round and read to
the host once (the step's one host synchronisation, skipped when no scalar is needed: a lean retrace, a
first step without crop or warm-up); the α rules (E1–E6), the period statistics and the batch controller
(E8–E9) in host floats; then elementwise passes over the tensors. Host scalars are float64 in every
precision, as the spec's state table has them.
"""

from __future__ import annotations

import math

import torch

from ...errors import ObservationError, StateError
from .. import _hyperparameters as checked
from . import _fused
from ._core import COUNTER, HOST, PARAM, WHOLE, Layout, Optimizer, as_tensors, reduce_sum

# Which rule set α at the last step (state field ``limit``, spec/elra.md).
NO_LIMIT, RATIO_CAP, CROP, WARMUP_FLOOR, ABSOLUTE_BOUND = range(5)

GROWTH = 1.5  # (E9) the batch multiple's factor per controller update
HISTORY = 4  # (E9) period means kept, newest first: f̄_s … f̄_{s−3}
PAPER_INITIAL_LR = 1e-3  # Sec. 3.1: α_0 = 10⁻³
AUTHORS_INITIAL_LR = 1e-5  # convention='authors_code': the January-2024 code starts at 10⁻⁵
AUTHORS_GROWTH_DAMPER = 855000.0  # authors_code: D_0, γ_max = 10⁶/(1 + D)
AUTHORS_ERROR_DAMPER = 500000.0  # authors_code: E_0, and where a rising step pins E once E ≥ E_0
AUTHORS_SMALL_DIMENSION = 20  # authors_code: n ≤ 20 has no correction factor and no 1.1 f(x_0) start rule


class HostHistory(Layout):
    """``means`` (4,): a CPU tensor in the working precision. The batch controller reads it on the host
    without a device synchronisation; the working precision makes it round-trip through ``init`` exactly."""

    def flat(self, stored, structure):
        return stored

    def store(self, name, value, structure, default):
        (t,), _ = as_tensors(name, [value], StateError, structure.dtype, "cpu")
        if t.shape != default.shape:
            raise StateError(name, f"must have shape {tuple(default.shape)}, got {tuple(t.shape)}")
        return t

    def clone(self, stored):
        return stored.clone()


def read_sums(rows: list[torch.Tensor], width: int) -> list[float]:
    """Per-tensor rows of ``width`` partial sums, combined by one ``reduce_sum`` round and read to the host
    once: the step's host synchronisation."""
    return reduce_sum(rows).tolist() if rows else [0.0] * width


def reduced_inner_products(pairs) -> list[float]:
    """Σ over all tensors of ⟨a_i, b_i⟩ for each (a, b) pair of tensor lists, in one round and one read."""
    rows = [torch.stack([a[i].reshape(-1) @ b[i].reshape(-1) for a, b in pairs]) for i in range(len(pairs[0][0]))]
    return read_sums(rows, len(pairs))


def lean_partials(x_prev, theta, grad, decay: float) -> list[torch.Tensor]:
    """Per tensor (⟨ω x_{t−1} − x_t, G_t⟩, ‖G_t‖²), the difference formed entry by entry as
    (x_{t−1} − x_t) + (ω − 1) x_{t−1} (exact for ω = 1 up to the stored x_t), one tensor at a time."""
    rows = []
    for xp, p, g in zip(x_prev, theta, grad):
        back = xp - p
        if decay != 1.0:
            back.add_(xp, alpha=decay - 1.0)
        g = g.reshape(-1)
        rows.append(torch.stack([back.reshape(-1) @ g, g @ g]))
    return rows


SUMS = {"g_prev_sq": ("g_prev", "g_prev"), "inner": ("grad", "g_prev"), "g_sq": ("grad", "grad")}
"""``elra``'s reduced scalars, as the inner products of which vectors: ‖G_{t−1}‖², ⟨G_t, G_{t−1}⟩, ‖G_t‖²."""
LEAN_SUMS = ("step_inner", "g_sq")
"""``elra_lean``'s reduced scalars (``lean_partials``): ⟨ω x_{t−1} − x_t, G_t⟩ and ‖G_t‖²."""


class _ELRABase(Optimizer):
    """What both forms share: the α rules (E1–E6), the retrace rule (E7), the period statistics, the batch
    controller (E8–E10) and boosting (E11)."""

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

    def __init__(self, dtype, device, **hp):
        super().__init__(dtype, device, needs=frozenset({"grad", "params", "loss"}), **hp)
        boosted = PARAM if self.boost else WHOLE  # x_sum, x_mean: n, or an empty vector without boost
        self.layouts = {**self.common_layouts, **self.form_layouts, "x_sum": boosted, "x_mean": boosted}

    def common_initial_state(self, structure, params) -> dict:
        if self.boost:
            x_sum, x_mean = structure.zeros(), structure.zeros()
        else:
            x_sum, x_mean = (torch.zeros(0, dtype=structure.dtype, device=structure.device) for _ in range(2))
        return {
            "step": 0,
            "alpha": self.lr,
            "x_prev": [p.clone() for p in params],
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
            "means": torch.zeros(HISTORY, dtype=structure.dtype),
            "updates": 0,
            "multiple": self.initial_multiple,
            "x_sum": x_sum,
            "x_mean": x_mean,
        }

    # -- α (host floats) --------------------------------------------------------------------

    def kappa(self, alpha: float) -> float:
        """(E2) κ(α_{t−1}) = 1 + 0.15 (1 + α_{t−1}²)⁻¹, or 1 without the correction."""
        return 1.0 + 0.15 / (1.0 + alpha * alpha) if self.correction == "paper" else 1.0

    def adapted_alpha(self, alpha: float, g_prev_sq: float, inner: float) -> tuple[float, int]:
        """(E1, E3) α κ ‖G_{t−1}‖² / (‖G_{t−1}‖² − ⟨G_t, G_{t−1}⟩), the ratio capped at γ_max; a zero last
        gradient keeps α, a denominator ≤ 0 is the cap case."""
        if g_prev_sq == 0.0:
            return alpha, NO_LIMIT
        denominator = g_prev_sq - inner
        if denominator <= 0.0:
            return alpha * self.max_ratio, RATIO_CAP
        ratio = self.kappa(alpha) * g_prev_sq / denominator
        if ratio > self.max_ratio:
            return alpha * self.max_ratio, RATIO_CAP
        return alpha * ratio, NO_LIMIT

    @staticmethod
    def retrace_alpha(alpha: float, g_prev_sq: float, f: float, f_prev: float) -> float:
        """(E7) the parabola minimiser ½α²‖G_{t−1}‖²/(f_t − f_{t−1} + α‖G_{t−1}‖²), factor at most ½; halve
        when the parabola has no minimum."""
        denominator = f - f_prev + alpha * g_prev_sq
        if g_prev_sq == 0.0 or denominator <= 0.0:
            return 0.5 * alpha
        return alpha * min(0.5, 0.5 * alpha * g_prev_sq / denominator)

    def limited_alpha(self, alpha: float, limit: int, norm: float, t: int, retraced: bool) -> tuple[float, int]:
        """(E4) crop, (E5) warm-up floor (not on a retrace), (E6) absolute bounds, in that order; ``norm`` is
        ‖G‖ of the gradient the step uses."""
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
        """(E10) G̃ = G · m_0/m_t."""
        return self.initial_multiple / s["multiple"] if self.gradient_decay else 1.0

    # -- periods (host, and x_sum on the device) ---------------------------------------------

    def account_period_(self, s: dict, f: float, theta: list[torch.Tensor], accepted: bool) -> None:
        """(E8, E9, E11) Count this step's minimal batches, and its loss and point when accepted; close the
        period once it has consumed ``period`` minimal batches and holds an accepted loss."""
        s["period_batches"] += s["multiple"]
        if accepted:
            s["period_count"] += 1
            delta = f - s["period_mean"]
            s["period_mean"] += delta / s["period_count"]
            s["period_m2"] += delta * (f - s["period_mean"])  # Welford
            if self.boost:
                torch._foreach_add_(s["x_sum"], theta)
        count = s["period_count"]
        if s["period_batches"] < self.period or count == 0:
            return
        mean, std = s["period_mean"], math.sqrt(s["period_m2"] / count)  # population σ
        means = s["means"]
        means[1:] = means[:-1].clone()
        means[0] = mean
        if self.boost:
            torch._foreach_copy_(s["x_mean"], s["x_sum"])
            torch._foreach_div_(s["x_mean"], count)
            torch._foreach_zero_(s["x_sum"])
        s.update(
            periods=s["periods"] + 1,
            period_batches=0,
            period_count=0,
            period_mean=0.0,
            period_m2=0.0,
            last_mean=mean,
            last_std=std,
        )
        if self.batch_control and self.batch_triggered(means.tolist(), std, s["periods"]):
            s["updates"] += 1
            s["multiple"] = self.multiple_after(s["updates"])

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

    def _F_(self, state, step):
        if self.convention == "authors_code":
            self._F_authors_code_(state, step)
            return
        s = state.stored
        retraced, scale = self.advance_host_(s, step, self.eager_sums)
        if not retraced:  # the step starts from x_t along G̃_t; a retrace keeps (x_{t−1}, G_{t−1}, f_{t−1})
            torch._foreach_copy_(s["x_prev"], step.params)
            torch._foreach_copy_(s["g_prev"], step.grad)
            if scale != 1.0:
                torch._foreach_mul_(s["g_prev"], scale)  # (E10)

    def eager_sums(self, s: dict, step, names: tuple[str, ...]) -> list[float]:
        """The named ``SUMS`` of a step, in one round and one read."""
        tensors = {"grad": step.grad, "g_prev": s["g_prev"]}
        return reduced_inner_products([tuple(tensors[x] for x in SUMS[name]) for name in names])

    def needed_sums(self, t: int, first: bool) -> tuple[str, ...]:
        """The step's reduction: ‖G_{t−1}‖² and ⟨G_t, G_{t−1}⟩ after the first step, ‖G_t‖² when the crop or the
        warm-up floor reads it (G_t = G̃_t/scale)."""
        norm = ("g_sq",) if self.needs_norm(t) else ()
        return norm if first else ("g_prev_sq", "inner", *norm)

    def advance_host_(self, s: dict, step, reduce) -> tuple[bool, float]:
        """Everything of F but the vectors x_{t−1}, G_{t−1}: the retrace decision, the step's one round
        ``reduce(s, step, names)`` (host floats), α (E1–E7), the period statistics, the counters. Returns
        (retraced, the gradient scale of E10)."""
        f = step.loss
        t, scale, first = s["step"] + 1, self.gradient_scale(s), s["step"] == 0
        retraced = not first and self.should_retrace(s, f)
        names = self.needed_sums(t, first)
        sums = dict(zip(names, reduce(s, step, names))) if names else {}
        limit = NO_LIMIT
        if first:  # α_0: nothing to adapt yet
            alpha = self.lr
            norm = scale * math.sqrt(sums.get("g_sq", 0.0))
        elif retraced:  # (E7)
            alpha = self.retrace_alpha(s["alpha"], sums["g_prev_sq"], f, s["f_prev"])
            norm = math.sqrt(sums["g_prev_sq"])
        else:  # (E1–E3)
            alpha, limit = self.adapted_alpha(s["alpha"], sums["g_prev_sq"], scale * sums["inner"])
            norm = scale * math.sqrt(sums["g_sq"]) if "g_sq" in sums else 0.0
        s["alpha"], s["limit"] = self.limited_alpha(alpha, limit, norm, t, retraced)
        self.account_period_(s, f, step.params, accepted=not retraced)
        if not retraced:
            s["f_prev"] = f
        if first:
            s["f_initial"] = f
        s["step"], s["retraced"] = t, int(retraced)
        return retraced, scale

    def _G(self, state, step):
        # (E12) ω x_from − α G_from − x_t, as (x_from − x_t) + (ω − 1) x_from − α G_from: exactly −α G̃_t
        # after an accepted step without weight decay (x_from = x_t)
        s = state.stored
        update = torch._foreach_sub(s["x_prev"], step.params)
        if self.weight_decay != 1.0:
            torch._foreach_add_(update, s["x_prev"], alpha=self.weight_decay - 1.0)
        torch._foreach_add_(update, s["g_prev"], alpha=-s["alpha"])
        return update

    def _apply_(self, state, step, params):
        s = state.stored
        if s["retraced"]:
            torch._foreach_copy_(params, s["x_prev"])  # back to x_{t−1}; otherwise x_from is θ itself
        if self.weight_decay != 1.0:
            torch._foreach_mul_(params, self.weight_decay)
        torch._foreach_add_(params, s["g_prev"], alpha=-s["alpha"])

    # -- the authors' January-2024 code (spec/elra.md#authors-code) -----------------------------

    def _F_authors_code_(self, state, step):
        s, f, theta, n = state.stored, step.loss, step.params, state.structure.n
        t = s["step"] + 1
        if t == 1:  # the first call records f_0 and steps with the initial α
            torch._foreach_copy_(s["x_prev"], theta)
            torch._foreach_copy_(s["g_prev"], step.grad)
            s.update(step=1, f_prev=f, f_initial=f, relaxed_best=f)
            self.account_period_(s, f, theta, accepted=True)
            return
        best, error_damper, alpha_prev = s["relaxed_best"], s["error_damper"], s["alpha"]
        if best < 0.0:
            raise ObservationError(
                "loss",
                "convention='authors_code' takes √ of the relaxed best loss, which is negative here; the "
                "January-2024 code fails the same way (spec/elra.md#authors-code): shift the loss by a constant",
            )
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
        g_prev = s["g_prev"]
        g_prev_sq, inner = reduced_inner_products([(g_prev, g_prev), (step.grad, g_prev)])  # the one round
        if retraced:
            denominator = f - s["f_prev"] + alpha_prev * g_prev_sq
            # the code divides unguarded; stepspec halves at an exact 0 instead of raising
            alpha = alpha_prev * 0.5 * alpha_prev * g_prev_sq / denominator if denominator != 0.0 else 0.5 * alpha_prev
        else:
            shrink = (g_prev_sq - inner) / g_prev_sq if g_prev_sq > 0.0 else 1.0
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
        self.account_period_(s, f, theta, accepted=not retraced)
        torch._foreach_copy_(s["x_prev"], theta)
        if retraced:  # x_{t−1} rebuilt as x_t + α_{t−1} G_{t−1}
            torch._foreach_add_(s["x_prev"], g_prev, alpha=alpha_prev)
        else:
            torch._foreach_copy_(s["g_prev"], step.grad)
            s["f_prev"] = f
        s.update(
            step=t,
            alpha=alpha,
            retraced=int(retraced),
            limit=ABSOLUTE_BOUND if alpha in (self.lr_min, self.lr_max) else NO_LIMIT,
            growth_damper=damper,
            error_damper=error_damper,
            relaxed_best=f if f < best else 1.1 * best,
        )


# --------------------------------------------------------------------------- elra_lean


class LeanELRA(_ELRABase):
    """Sec. 3.6: only x_{t−1} is stored. (E13) is evaluated as ⟨ω x_{t−1} − x_t, G_t⟩/α_{t−1}, the same
    inner product by linearity, with the difference formed per entry: it does not cancel between two
    sums of size ‖x‖‖G‖ as ω⟨x_{t−1}, G_t⟩ − ⟨x_t, G_t⟩ would (spec/elra.md#elra_lean, accuracy)."""

    algo = "elra_lean"
    form_layouts = {"g_prev_sq": HOST, "grad_scale": HOST, "rejected_alpha": HOST}

    def initial_state(self, structure, params):
        return {
            **self.common_initial_state(structure, params),
            "g_prev_sq": 0.0,
            "grad_scale": 1.0,
            "rejected_alpha": 0.0,
        }

    def _F_(self, state, step):
        s = state.stored
        retraced, _ = self.advance_host_(s, step, self.eager_sums)
        if not retraced:
            torch._foreach_copy_(s["x_prev"], step.params)

    def eager_sums(self, s: dict, step, names: tuple[str, ...]) -> list[float]:
        """The named ``LEAN_SUMS`` of a step (``needed_sums``), in one round and one read."""
        if names == ("g_sq",):
            return reduced_inner_products([(step.grad, step.grad)])
        return read_sums(lean_partials(s["x_prev"], step.params, step.grad, self.weight_decay), 2)

    @staticmethod
    def needed_sums(first: bool, retraced: bool) -> tuple[str, ...]:
        """‖G_t‖² at the first step; nothing on a retrace (E7, E14: ‖G_{t−1}‖² is in the state); otherwise
        ``LEAN_SUMS``: ⟨ω x_{t−1} − x_t, G_t⟩ and ‖G_t‖²."""
        return ("g_sq",) if first else () if retraced else LEAN_SUMS

    def advance_host_(self, s: dict, step, reduce) -> tuple[bool, float]:
        """Everything of F but the vector x_{t−1}: the retrace decision, the step's one round
        ``reduce(s, step, names)`` (host floats), α (E1–E7, E13), the period statistics, the counters.
        Returns (retraced, the gradient scale of E10)."""
        f, theta = step.loss, step.params
        t, scale, first = s["step"] + 1, self.gradient_scale(s), s["step"] == 0
        retraced = not first and self.should_retrace(s, f)
        alpha_prev, limit = s["alpha"], NO_LIMIT
        names = self.needed_sums(first, retraced)
        sums = dict(zip(names, reduce(s, step, names))) if names else {}
        if first:
            alpha, g_sq = self.lr, scale * scale * sums["g_sq"]
        elif retraced:  # (E7, E14)
            alpha, g_sq = self.retrace_alpha(alpha_prev, s["g_prev_sq"], f, s["f_prev"]), s["g_prev_sq"]
        else:
            inner = scale * sums["step_inner"] / alpha_prev  # (E13) ⟨G_{t−1}, G̃_t⟩
            alpha, limit = self.adapted_alpha(alpha_prev, s["g_prev_sq"], inner)
            g_sq = scale * scale * sums["g_sq"]
        s["alpha"], s["limit"] = self.limited_alpha(alpha, limit, math.sqrt(g_sq), t, retraced)
        self.account_period_(s, f, theta, accepted=not retraced)
        if not retraced:
            s["f_prev"] = f
        if first:
            s["f_initial"] = f
        s.update(
            step=t,
            g_prev_sq=g_sq,
            grad_scale=scale,
            rejected_alpha=alpha_prev if retraced else 0.0,
            retraced=int(retraced),
        )
        return retraced, scale

    def _retrace_target(self, s: dict, theta: list[torch.Tensor]) -> list[torch.Tensor]:
        """(E14) x_{t+1} = ω x_{t−1} − α_t (ω x_{t−1} − x_t)/α_rejected."""
        start = torch._foreach_mul(s["x_prev"], self.weight_decay)
        back = torch._foreach_sub(start, theta)
        torch._foreach_add_(start, back, alpha=-s["alpha"] / s["rejected_alpha"])
        return start

    def _G(self, state, step):
        s, theta = state.stored, step.params
        if s["retraced"]:
            return torch._foreach_sub(self._retrace_target(s, theta), theta)
        update = torch._foreach_mul(step.grad, -s["alpha"] * s["grad_scale"])  # (E12) ω x_t − α G̃_t − x_t
        if self.weight_decay != 1.0:
            torch._foreach_add_(update, theta, alpha=self.weight_decay - 1.0)
        return update

    def _apply_(self, state, step, params):
        s = state.stored
        if s["retraced"]:
            torch._foreach_copy_(params, self._retrace_target(s, step.params))
            return
        if self.weight_decay != 1.0:
            torch._foreach_mul_(params, self.weight_decay)
        torch._foreach_add_(params, step.grad, alpha=-s["alpha"] * s["grad_scale"])


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
    dtype=torch.float64,
    device="cpu",
):
    """ELRA (paper 004, Sec. 3), the form that keeps G_{t−1}; ``lr`` (α_0) defaults to 1e-3, or to 1e-5
    with convention='authors_code'."""
    if lr is None:
        lr = AUTHORS_INITIAL_LR if convention == "authors_code" else PAPER_INITIAL_LR
    values = dict(locals())
    del values["dtype"], values["device"]
    hp = checked.elra("elra", values)
    return ELRA(dtype, device, **hp)


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
    dtype=torch.float64,
    device="cpu",
):
    """ELRA's memory-lean form (paper 004, Sec. 3.6): one stored vector, x_{t−1}."""
    values = dict(locals())
    del values["dtype"], values["device"]
    return LeanELRA(dtype, device, **checked.elra("elra_lean", values))


# --------------------------------------------------------------------------- the fast path (spec/backends.md#compiled)
# The host part of F (the retrace decision, α, the periods) around the step's one round, then one pass per
# tensor that writes x_{t−1}, G_{t−1} (elra) and θ. A retrace is a host decision that reaches the pass as a
# 0-d flag on the parameters' device (torch.where's condition): both outcomes are one pass over the same
# tensors, the stored ones read either way (a written tensor is read into the cache anyway).


def _elra_row(grad: torch.Tensor, g_prev: torch.Tensor) -> torch.Tensor:
    """``SUMS`` of one tensor in ``ELRA_ROW`` order, accumulated in float64: one loop under torch.compile."""
    g, h = grad.to(torch.float64), g_prev.to(torch.float64)
    return torch.stack([(h * h).sum(), (g * h).sum(), (g * g).sum()])


ELRA_ROW = ("g_prev_sq", "inner", "g_sq")


def _elra_pass(theta, g, x_prev, g_prev, s):
    """(E12) θ ← ω x_from − α G_from, after storing (x_from, G_from) as (x_{t−1}, G_{t−1}): (x_t, G̃_t) on an
    accepted step, the kept ones on a retrace."""
    alpha, decay, scale, retraced = s
    start = torch.where(retraced, x_prev, theta)
    direction = torch.where(retraced, g_prev, scale * g)  # (E10) G̃_t
    x_prev.copy_(start)
    g_prev.copy_(direction)
    theta.copy_(decay * start - alpha * direction)


def _elra_scalars(optimizer, state, step, params, compile):
    """F's host part (the authors' convention: its eager F, which the pass then repeats harmlessly) and the
    pass's scalars (α, ω, the gradient scale, the retrace flag)."""
    s = state.stored
    if optimizer.convention == "authors_code":
        optimizer._F_authors_code_(state, step)
        retraced, scale = bool(s["retraced"]), 1.0
    else:

        def reduce(s, step, names):
            rows = _fused.partial_sums(_elra_row, [step.grad, s["g_prev"]], compile)
            sums = dict(zip(ELRA_ROW, read_sums(rows, len(ELRA_ROW))))
            return [sums[name] for name in names]

        retraced, scale = optimizer.advance_host_(s, step, reduce)
    return s["alpha"], optimizer.weight_decay, scale, torch.tensor(retraced, device=state.structure.device)


def _lean_row(x_prev: torch.Tensor, theta: torch.Tensor, grad: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """``lean_partials`` of one tensor, in float64 (the difference of two float32 entries is exact there)."""
    x, p, g = (t.to(torch.float64) for t in (x_prev, theta, grad))
    back = (x - p) + (decay - 1.0) * x
    return torch.stack([(back * g).sum(), (g * g).sum()])


def _lean_pass(theta, g, x_prev, s):
    """(E12) θ ← ω x_t − α G̃_t after storing x_t as x_{t−1}; on a retrace (E14) θ ← ω x_{t−1} +
    back_rate (ω x_{t−1} − x_t), back_rate = −α_t/α_rejected, x_{t−1} kept."""
    rate, decay, back_rate, retraced = s
    start = decay * torch.where(retraced, x_prev, theta)
    new = torch.where(retraced, start + back_rate * (start - theta), start + rate * g)
    x_prev.copy_(torch.where(retraced, x_prev, theta))
    theta.copy_(new)


def _lean_scalars(optimizer, state, step, params, compile):
    """F's host part and the pass's scalars (−α·scale, ω, the retrace's back_rate, the retrace flag)."""
    s, decay = state.stored, torch.tensor(optimizer.weight_decay, dtype=torch.float64)

    def reduce(s, step, names):
        rows = _fused.partial_sums(_lean_row, [s["x_prev"], step.params, step.grad], compile, (decay,))
        sums = dict(zip(LEAN_SUMS, read_sums(rows, len(LEAN_SUMS))))
        return [sums[name] for name in names]

    retraced, scale = optimizer.advance_host_(s, step, reduce)
    back_rate = -s["alpha"] / s["rejected_alpha"] if retraced else 0.0
    return -s["alpha"] * scale, optimizer.weight_decay, back_rate, torch.tensor(retraced, device=state.structure.device)


KERNELS: dict[str, _fused.Kernel] = {
    "elra": _fused.Kernel(("x_prev", "g_prev"), _elra_scalars, _elra_pass, reduces=True),
    "elra_lean": _fused.Kernel(("x_prev",), _lean_scalars, _lean_pass, reduces=True),
}
"""Algorithm id → its fast path (``_fused``)."""
