"""ELRA, exponential learning-rate adaption (paper 004), spec/elra.md.

A momentum-free gradient step x_{t+1} = x_t − α_t G_t whose α is re-estimated every step from the
angle between successive gradients (a parabola through the last step, eq. 4), with soft restarts
(retrace), a batch-size controller for the training loop, optional gradient decay and weight decay,
and the running mean of the iterates (boosting). ``elra`` keeps the last gradient; ``elra_lean``
(Sec. 3.6) recovers ⟨G_{t−1}, G_t⟩ from the last two points instead. Tags (E1)… cite spec/elra.md.

Index shift: stepspec's step t observes θ_{t−1}, the paper's x_{t−1}; the spec page writes the
paper's indices.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .._core import Optimizer, State, state
from ..errors import HyperparameterError, ObservationError
from ..spec import check_hyperparameters

# Which rule set α at the last step (state field ``limit``): the decisions a backend must reproduce.
NO_LIMIT, RATIO_CAP, CROP, WARMUP_FLOOR, ABSOLUTE_BOUND = range(5)

GROWTH = 1.5  # (E9) the batch multiple's factor per controller update, Sec. 3.3
HISTORY = 4  # (E9) period means kept: f̄_s … f̄_{s−3}, for condition (3)
PAPER_INITIAL_LR = 1e-3  # Sec. 3.1: "We chose α_0 = 10⁻³"
AUTHORS_INITIAL_LR = 1e-5  # the January-2024 code resets α to 1e-5 at its first call

# convention='authors_code' (spec/elra.md#authors-code)
AUTHORS_GROWTH_DAMPER = 855000.0  # D_0: γ_max starts at 10⁶/(1 + D_0/3.9) ≈ 4.56
AUTHORS_ERROR_DAMPER = 500000.0  # E_0, and the value a rising step pins E to once E ≥ E_0
AUTHORS_SMALL_DIMENSION = 20  # n ≤ 20: no correction factor and no 1.1 f(x_0) start rule


@state
class ELRAState(State):
    step: int  # t, the steps taken
    alpha: float  # α of the last step (α_0 before the first)
    x_prev: np.ndarray  # (n,) the point the last step started from
    g_prev: np.ndarray  # (n,) the (decayed) gradient the last step used
    f_prev: float  # f at x_prev
    f_initial: float  # f(x_0), for the initial retrace rule
    retraced: int  # 1 if the last step was a retrace
    limit: int  # the rule that set α last (NO_LIMIT …)
    periods: int  # control periods completed
    period_batches: int  # minimal batches consumed in the current period
    period_count: int  # accepted losses in the current period
    period_mean: float  # their running mean (Welford)
    period_m2: float  # their sum of squared deviations (Welford)
    last_mean: float  # f̄ of the last completed period
    last_std: float  # σ of the last completed period
    means: np.ndarray  # (4,) f̄_s, f̄_{s−1}, f̄_{s−2}, f̄_{s−3}, newest first
    updates: int  # batch-controller updates so far (k)
    multiple: int  # m_t, the minimal batches the next observation must average
    x_sum: np.ndarray  # (n,) or (0,) without boost: sum of the accepted iterates of the period
    x_mean: np.ndarray  # (n,) or (0,): mean of the accepted iterates of the last period
    growth_damper: float  # authors_code only: D, γ_max = 10⁶/(1 + D)
    error_damper: float  # authors_code only: E of the retrace tolerance
    relaxed_best: float  # authors_code only: T, the relaxed best loss


@state
class LeanELRAState(State):
    step: int
    alpha: float
    x_prev: np.ndarray
    g_prev_sq: float  # ‖G_{t−1}‖², kept instead of G_{t−1} (Sec. 3.6)
    grad_scale: float  # the gradient-decay factor of the last observation (G needs it)
    rejected_alpha: float  # α of the rejected step, when the last step was a retrace
    f_prev: float
    f_initial: float
    retraced: int
    limit: int
    periods: int
    period_batches: int
    period_count: int
    period_mean: float
    period_m2: float
    last_mean: float
    last_std: float
    means: np.ndarray
    updates: int
    multiple: int
    x_sum: np.ndarray
    x_mean: np.ndarray


class _ELRABase(Optimizer):
    """What both forms share: the α rules (E1–E6), the retrace rule (E7), the period statistics,
    the batch controller (E8–E10) and boosting (E11)."""

    def common_initial_state(self, theta0: np.ndarray) -> dict:
        boosted = theta0.shape[0] if self.boost else 0
        return {
            "step": 0,
            "alpha": self.lr,
            "x_prev": theta0,
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
            "means": np.zeros(HISTORY, theta0.dtype),
            "updates": 0,
            "multiple": self.initial_multiple,
            "x_sum": np.zeros(boosted, theta0.dtype),
            "x_mean": np.zeros(boosted, theta0.dtype),
        }

    # -- α ----------------------------------------------------------------------------

    def kappa(self, alpha: float) -> float:
        """(E2) κ(α_{t−1}) = 1 + 0.15 (1 + α_{t−1}²)⁻¹, or 1 without the correction."""
        return 1.0 + 0.15 / (1.0 + alpha * alpha) if self.correction == "paper" else 1.0

    def adapted_alpha(self, alpha: float, g_prev_sq: float, inner: float) -> tuple[float, int]:
        """(E1, E3) α_t = α_{t−1} κ ‖G_{t−1}‖² / (‖G_{t−1}‖² − ⟨G_t, G_{t−1}⟩), ratio capped at γ_max."""
        if g_prev_sq == 0.0:
            return alpha, NO_LIMIT  # the last step was zero: nothing learned about the curvature
        denominator = g_prev_sq - inner
        if denominator <= 0.0:
            return alpha * self.max_ratio, RATIO_CAP  # (E3) no minimum along the line: the cap case
        ratio = self.kappa(alpha) * g_prev_sq / denominator
        if ratio > self.max_ratio:
            return alpha * self.max_ratio, RATIO_CAP
        return alpha * ratio, NO_LIMIT

    def retrace_alpha(self, alpha: float, g_prev_sq: float, f: float, f_prev: float) -> float:
        """(E7) the minimiser of the parabola through f(x_{t−1}) with slope −‖G_{t−1}‖² and f(x_t):
        α_{t−1} · ½ α_{t−1}‖G_{t−1}‖² / (f(x_t) − f(x_{t−1}) + α_{t−1}‖G_{t−1}‖²), factor at most ½."""
        denominator = f - f_prev + alpha * g_prev_sq
        if g_prev_sq == 0.0 or denominator <= 0.0:
            return 0.5 * alpha  # no parabola with a minimum: halve
        return alpha * min(0.5, 0.5 * alpha * g_prev_sq / denominator)

    def limited_alpha(self, alpha: float, limit: int, step_norm: float, t: int, retraced: bool) -> tuple[float, int]:
        """(E4) crop α‖G‖ ≤ c, (E5) the warm-up floor α‖G‖ ≥ c_warm, (E6) the absolute bounds, in
        that order; ``step_norm`` is ‖G‖ of the gradient the step will use."""
        if self.crop is not None and alpha * step_norm > self.crop:
            alpha, limit = self.crop / step_norm, CROP
        if t <= self.warmup_steps and not retraced and step_norm > 0.0 and alpha * step_norm < self.warmup_floor:
            alpha, limit = self.warmup_floor / step_norm, WARMUP_FLOOR
        bounded = min(max(alpha, self.lr_min), self.lr_max)
        return (bounded, ABSOLUTE_BOUND) if bounded != alpha else (alpha, limit)

    def should_retrace(self, s, f: float) -> bool:
        """(E7) f(x_t) above the last period's f̄ + k σ; before the first period closes, above
        f(x_0) + 0.1 |f(x_0)| (the paper's 1.1 f(x_0) for a non-negative loss)."""
        if not self.retrace:
            return False
        if s.periods > 0:
            return f > s.last_mean + self.retrace_sigmas * s.last_std
        return self.initial_retrace and f > s.f_initial + 0.1 * abs(s.f_initial)

    def gradient_scale(self, s) -> float:
        """(E10) gradient decay: G̃ = G · m_0/m_t, m_t the multiple this observation averaged."""
        return self.initial_multiple / s.multiple if self.gradient_decay else 1.0

    # -- periods ------------------------------------------------------------------------

    def period_fields(self, s, f: float, theta: np.ndarray, accepted: bool) -> dict:
        """(E8) Account for this step's minimal batches and, when accepted, its loss and point; close
        the period once it has consumed ``period`` minimal batches (and holds an accepted loss)."""
        batches, count, mean, m2, x_sum = (
            s.period_batches + s.multiple,
            s.period_count,
            s.period_mean,
            s.period_m2,
            s.x_sum,
        )
        if accepted:
            count += 1
            delta = f - mean
            mean += delta / count
            m2 += delta * (f - mean)
            if self.boost:
                x_sum = x_sum + theta
        fields = {"period_batches": batches, "period_count": count, "period_mean": mean, "period_m2": m2}
        fields["x_sum"] = x_sum
        if batches < self.period or count == 0:
            return fields
        std = math.sqrt(m2 / count)  # population σ of the period's accepted losses
        means = np.roll(s.means, 1)  # newest first: f̄_s, then the three before
        means[0] = mean
        fields.update(
            periods=s.periods + 1,
            period_batches=0,
            period_count=0,
            period_mean=0.0,
            period_m2=0.0,
            last_mean=mean,
            last_std=std,
            means=means,
            x_sum=np.zeros_like(x_sum),
            x_mean=x_sum / count if self.boost else s.x_mean,
        )
        if self.batch_control and self.batch_triggered(means, std, s.periods + 1):
            updates = s.updates + 1
            fields.update(updates=updates, multiple=self.multiple_after(updates))
        return fields

    @staticmethod
    def batch_triggered(means: np.ndarray, std: float, periods: int) -> bool:
        """(E9) Sec. 3.3's conditions on f̄_s = means[0], f̄_{s−1} = means[1], … and σ_s."""
        rising = periods >= 2 and means[0] > means[1] + std / 10  # (1)
        noisy = std > 0.5 * abs(means[0])  # (2) σ_s / f̄_s > ½
        stalled = periods >= 4 and means[3] < min(means[0], means[1], means[2])  # (3)
        return bool(rising or noisy or stalled)

    def multiple_after(self, updates: int) -> int:
        """(E9) cascades: updates 1, 2 grow by 1.5, every third shrinks by 1/1.5, so the exponent after
        k updates is k − 2⌊k/3⌋; m = m_0 · 1.5^e rounded half up, at least 1."""
        exponent = updates - 2 * (updates // 3)
        return max(1, math.floor(self.initial_multiple * GROWTH**exponent + 0.5))


class ELRA(_ELRABase):
    algo = "elra"
    State = ELRAState

    def initial_state(self, theta0):
        return {
            **self.common_initial_state(theta0),
            "g_prev": np.zeros_like(theta0),
            "growth_damper": AUTHORS_GROWTH_DAMPER,
            "error_damper": AUTHORS_ERROR_DAMPER,
            "relaxed_best": 0.0,
        }

    def _F(self, s, obs):
        if self.convention == "authors_code":
            return self._F_authors_code(s, obs)
        theta, f, t = obs.params, obs.loss, s.step + 1
        g = self.gradient_scale(s) * obs.grad  # (E10)
        first = t == 1
        retraced = not first and self.should_retrace(s, f)
        limit = NO_LIMIT
        if first:
            alpha = self.lr  # α_0: nothing to adapt yet
            x_from, g_from, f_from = theta, g, f
        elif retraced:
            alpha = self.retrace_alpha(s.alpha, float(s.g_prev @ s.g_prev), f, s.f_prev)  # (E7)
            x_from, g_from, f_from = s.x_prev, s.g_prev, s.f_prev  # go back to x_{t−1}
        else:
            alpha, limit = self.adapted_alpha(s.alpha, float(s.g_prev @ s.g_prev), float(g @ s.g_prev))  # (E1)
            x_from, g_from, f_from = theta, g, f
        alpha, limit = self.limited_alpha(alpha, limit, float(np.linalg.norm(g_from)), t, retraced)
        return s.replace(
            step=t,
            alpha=alpha,
            x_prev=x_from,
            g_prev=g_from,
            f_prev=f_from,
            f_initial=f if first else s.f_initial,
            retraced=int(retraced),
            limit=limit,
            **self.period_fields(s, f, theta, accepted=not retraced),
        )

    def _G(self, s, obs):
        # (E12) x_{t+1} = ω x_from − α_t G_from: from x_t, or from x_{t−1} after a retrace
        return self.weight_decay * s.x_prev - s.alpha * s.g_prev - obs.params

    # -- the authors' January-2024 code (spec/elra.md#authors-code) ---------------------------

    def _F_authors_code(self, s, obs):
        theta, f, t, n = obs.params, obs.loss, s.step + 1, obs.params.shape[0]
        if t == 1:  # the first call only records f_0 and steps with the initial α
            return s.replace(
                step=1,
                x_prev=theta,
                g_prev=obs.grad,
                f_prev=f,
                f_initial=f,
                relaxed_best=f,
                **self.period_fields(s, f, theta, accepted=True),
            )
        best, error_damper = s.relaxed_best, s.error_damper
        if best < 0.0:
            raise ObservationError(
                "loss",
                "convention='authors_code' takes √ of the relaxed best loss, which is negative here; the "
                "January-2024 code fails the same way (spec/elra.md#authors-code): shift the loss by a constant",
            )
        tolerance = 25.0 + (2500.0 + 71.0 * math.sqrt(best)) / (1.0 + math.sqrt(error_damper))
        start = n <= AUTHORS_SMALL_DIMENSION or f < 1.1 * s.f_initial
        retraced = not (start and f < 1.1 * tolerance * best)
        damper = s.growth_damper
        if not retraced:
            damper /= 3.9
        elif damper > 1.0:
            damper = 16.0 * damper if damper < 62500.0 else AUTHORS_GROWTH_DAMPER
        else:
            damper += 16.0
        cap = 1e6 / (1.0 + damper)
        g_prev_sq = float(s.g_prev @ s.g_prev)
        if retraced:
            denominator = f - s.f_prev + s.alpha * g_prev_sq
            # the code divides by it unguarded; stepspec halves at an exact 0 instead of raising
            alpha = s.alpha * 0.5 * s.alpha * g_prev_sq / denominator if denominator != 0.0 else 0.5 * s.alpha
            x_from, g_from, f_from = theta + s.alpha * s.g_prev, s.g_prev, s.f_prev  # x_{t−1} rebuilt
        else:
            shrink = (g_prev_sq - float(obs.grad @ s.g_prev)) / g_prev_sq if g_prev_sq > 0.0 else 1.0
            if cap * shrink < 1.0:
                alpha = s.alpha * cap
            elif n <= AUTHORS_SMALL_DIMENSION:
                alpha = s.alpha / shrink
            else:
                loss_term = max(0.0, min(0.7, ((2.35 / s.f_initial) ** 2 * best) ** 0.8))
                alpha = s.alpha / (shrink * (1.0 - 0.14 * loss_term))
            x_from, g_from, f_from = theta, obs.grad, f
        alpha = min(max(alpha, self.lr_min), self.lr_max)
        worse = not retraced and f > s.f_prev
        if not worse:
            error_damper /= 1.69
        elif error_damper < 1.0:
            error_damper += 16.0
        elif error_damper < AUTHORS_ERROR_DAMPER:
            error_damper *= 16.0  # tested before multiplying: E can reach just under 16 E_0 = 8e6
        else:
            error_damper = AUTHORS_ERROR_DAMPER
        return s.replace(
            step=t,
            alpha=alpha,
            x_prev=x_from,
            g_prev=g_from,
            f_prev=f_from,
            retraced=int(retraced),
            limit=ABSOLUTE_BOUND if alpha in (self.lr_min, self.lr_max) else NO_LIMIT,
            growth_damper=damper,
            error_damper=error_damper,
            relaxed_best=f if f < best else 1.1 * best,
            **self.period_fields(s, f, theta, accepted=not retraced),
        )


class LeanELRA(_ELRABase):
    """Sec. 3.6: only x_{t−1} is stored; G_{t−1} = (ω x_{t−1} − x_t)/α_{t−1} is implied by the step."""

    algo = "elra_lean"
    State = LeanELRAState

    def initial_state(self, theta0):
        return {**self.common_initial_state(theta0), "g_prev_sq": 0.0, "grad_scale": 1.0, "rejected_alpha": 0.0}

    def _F(self, s, obs):
        theta, f, t = obs.params, obs.loss, s.step + 1
        scale = self.gradient_scale(s)
        g = scale * obs.grad
        first = t == 1
        retraced = not first and self.should_retrace(s, f)
        limit = NO_LIMIT
        if first:
            alpha, x_from, g_sq, f_from = self.lr, theta, float(g @ g), f
        elif retraced:
            alpha = self.retrace_alpha(s.alpha, s.g_prev_sq, f, s.f_prev)
            x_from, g_sq, f_from = s.x_prev, s.g_prev_sq, s.f_prev
        else:
            # (E13) ⟨G_{t−1}, G_t⟩ = (ω⟨x_{t−1}, G_t⟩ − ⟨x_t, G_t⟩)/α_{t−1}
            inner = (self.weight_decay * float(s.x_prev @ g) - float(theta @ g)) / s.alpha
            alpha, limit = self.adapted_alpha(s.alpha, s.g_prev_sq, inner)
            x_from, g_sq, f_from = theta, float(g @ g), f
        alpha, limit = self.limited_alpha(alpha, limit, math.sqrt(g_sq), t, retraced)
        return s.replace(
            step=t,
            alpha=alpha,
            x_prev=x_from,
            g_prev_sq=g_sq,
            grad_scale=scale,
            rejected_alpha=s.alpha if retraced else 0.0,
            f_prev=f_from,
            f_initial=f if first else s.f_initial,
            retraced=int(retraced),
            limit=limit,
            **self.period_fields(s, f, theta, accepted=not retraced),
        )

    def _G(self, s, obs):
        theta, decayed_prev = obs.params, self.weight_decay * s.x_prev
        if s.retraced:  # back to x_{t−1} along G_{t−1} = (ω x_{t−1} − x_t)/α_rejected
            return decayed_prev - s.alpha * (decayed_prev - theta) / s.rejected_alpha - theta
        return self.weight_decay * theta - s.alpha * s.grad_scale * obs.grad - theta


# --------------------------------------------------------------------------- constructors

_NEEDS = frozenset({"grad", "params", "loss"})
_FLAGS = ("retrace", "initial_retrace", "batch_control", "gradient_decay", "boost")
_COUNTS = {"period": 1, "warmup_steps": 0, "initial_multiple": 1}  # integer hyperparameters and their minimum


def _checked(algo: str, values: dict) -> dict:
    """The spec's interval and choice domains, then what they cannot say: flags, integers, the
    crop, and the relations between hyperparameters."""
    flags = {name: values.pop(name) for name in _FLAGS}
    counts = {name: values.pop(name) for name in _COUNTS}
    crop = values.pop("crop")
    hp = check_hyperparameters(algo, **values)
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise HyperparameterError(name, f"must be True or False, got {value!r}")
    for name, value in counts.items():
        low = _COUNTS[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise HyperparameterError(name, f"must be an integer ≥ {low}, got {value!r}")
    if crop is not None:
        if isinstance(crop, bool) or not isinstance(crop, numbers.Real) or not (math.isfinite(crop) and crop > 0):
            raise HyperparameterError("crop", f"must be None or a real number in (0, ∞), got {crop!r}")
        crop = float(crop)
        if hp["warmup_floor"] >= crop:
            raise HyperparameterError(
                "warmup_floor", f"must be below crop = {crop}: the floor and the crop would contradict each other"
            )
    if hp["lr_min"] >= hp["lr_max"]:
        raise HyperparameterError("lr_min", f"must be below lr_max = {hp['lr_max']}, got {hp['lr_min']}")
    return {**hp, **flags, **{name: int(value) for name, value in counts.items()}, "crop": crop}


def _check_initial_lr(hp: dict) -> None:
    if not hp["lr_min"] <= hp["lr"] <= hp["lr_max"]:
        raise HyperparameterError(
            "lr", f"must lie in [lr_min, lr_max] = [{hp['lr_min']}, {hp['lr_max']}], got {hp['lr']}"
        )


_AUTHORS_CODE_HAS_NONE_OF = {  # hyperparameter: the value that means "off", for convention='authors_code'
    "crop": None,
    "warmup_steps": 0,
    "batch_control": False,
    "gradient_decay": False,
    "weight_decay": 1.0,
}


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
):
    """ELRA, spec/elra.md#elra (paper 004, Sec. 3): the form that keeps G_{t−1}. ``lr`` (α_0)
    defaults to the paper's 1e-3, or to 1e-5 with convention='authors_code'."""
    if lr is None:
        lr = AUTHORS_INITIAL_LR if convention == "authors_code" else PAPER_INITIAL_LR
    hp = _checked("elra", dict(locals()))
    _check_initial_lr(hp)
    if hp["convention"] == "authors_code":
        for name, off in _AUTHORS_CODE_HAS_NONE_OF.items():
            if hp[name] != off:
                raise HyperparameterError(
                    name,
                    f"convention='authors_code' reproduces the January-2024 code, which has no {name}: leave it at "
                    f"{off!r} (spec/elra.md#authors-code)",
                )
    return ELRA(needs=_NEEDS, **hp)


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
):
    """ELRA's memory-lean form, spec/elra.md#elra_lean (paper 004, Sec. 3.6): one stored vector."""
    hp = _checked("elra_lean", dict(locals()))
    _check_initial_lr(hp)
    return LeanELRA(needs=_NEEDS, **hp)
