"""ELRA on the array API, spec/elra.md (tags E1–E14): ``elra`` (keeps G_{t−1}) and ``elra_lean`` (Sec. 3.6: one
stored vector), on parameter structures. Written from the spec page and the torch and jax designs; the reference
is not called.

A step is: the retrace decision (E7), on the host from the loss (a host float) and host state alone; the step's
inner products as per-leaf partial sums, stacked and combined by one ``reduce_sum`` round and read to the host
once; the α rules (E1–E6), the period statistics and the batch controller (E8–E9) in host floats
(``stepspec.backends._elra_host``, shared with the torch backend). Elementwise
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

from ...errors import StateError
from ...reference.elra import HISTORY
from .. import _hyperparameters as checked
from .._elra_host import ELRA_FIELDS, LEAN_FIELDS, HostRules, authors_relaxed_best
from .._elra_host import NO_LIMIT as NO_LIMIT
from .._elra_host import RATIO_CAP as RATIO_CAP
from ._core import COUNTER, HOST, PARAM, WHOLE, Layout, Optimizer, as_arrays, over_leaves

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


class _ELRABase(HostRules, Optimizer):
    """What both forms share on the array API: the state's layouts and initial values, and boosting's (E11) x_sum
    and x_mean on the device, around the shared host rules (``_elra_host.HostRules``: α, the retrace rule, the
    periods, the batch controller)."""

    def __init__(self, ns, **hp):
        super().__init__(ns, needs=_NEEDS, **hp)
        self.layouts = self.state_layouts(COUNTER, HOST, PARAM, HostHistory(), WHOLE)

    def common_initial_state(self, structure, params) -> dict:
        if self.boost:
            x_sum, x_mean = structure.zeros(), structure.zeros()
        else:
            x_sum = x_mean = self.ns.zeros((0,))
        return {
            **self.common_host_state(),
            "x_prev": params,
            "means": np.zeros(HISTORY, dtype=self.ns.dtype),
            "x_sum": x_sum,
            "x_mean": x_mean,
        }

    @property
    def decay_less_one(self) -> float:
        return self.weight_decay - 1.0

    @staticmethod
    def shifted_means(means: np.ndarray, mean: float) -> np.ndarray:
        """The stored history with the closing period's f̄ in front, in the history's precision."""
        return np.concatenate([np.asarray([mean], means.dtype), means[:-1]])

    def period_fields(self, state, f: float, theta: list, accepted: bool) -> dict:
        """The period's host fields (``period_host_fields``) and boosting's (E11) x_sum and, when the period
        closes, x_mean."""
        s = state.stored
        fields, closed = self.period_host_fields(s, f, accepted)
        if self.boost:
            x_sum = s["x_sum"]
            if accepted:
                x_sum = over_leaves(self.ns.fused(_pass_sum), [x_sum, theta])
            fields["x_sum"] = x_sum
            if closed:
                fields["x_mean"] = over_leaves(self.ns.fused(_pass_mean), [x_sum], float(closed))
                fields["x_sum"] = state.structure.zeros()
        return fields


# --------------------------------------------------------------------------- elra


class ELRA(_ELRABase):
    algo = "elra"
    own_fields = ELRA_FIELDS

    def initial_state(self, structure, params):
        return {
            **self.common_initial_state(structure, params),
            "g_prev": structure.zeros(),
            **self.elra_host_state(),
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
        s, f = state.stored, step.loss
        if self.convention == "authors_code":
            fields = self.authors_fields(s, f, state.structure.n, lambda names, scale: self.sums(s, step, scale, names))
            retraced = bool(fields.get("retraced", 0))
            period = self.period_fields(state, f, step.params, accepted=not retraced)
            return {**fields, **period}, "rebuilt" if retraced else "taken", 1.0
        fields, scale = self.elra_fields(s, f, lambda names, scale: self.sums(s, step, scale, names))
        retraced = bool(fields["retraced"])
        fields.update(self.period_fields(state, f, step.params, accepted=not retraced))
        return fields, "kept" if retraced else "taken", scale

    def check_F(self, state, step):
        # the authors' √T: the January code raises on a negative relaxed best, and so does the convention
        s = state.stored
        if self.convention == "authors_code" and s["step"] >= 1:
            authors_relaxed_best(s)

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


# --------------------------------------------------------------------------- elra_lean


class LeanELRA(_ELRABase):
    """Sec. 3.6: only x_{t−1} is stored; (E13) is evaluated as ⟨ω x_{t−1} − x_t, G_t⟩/α_{t−1}, the difference
    formed entry by entry."""

    algo = "elra_lean"
    own_fields = LEAN_FIELDS

    def initial_state(self, structure, params):
        return {
            **self.common_initial_state(structure, params),
            **self.lean_host_state(),
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
        fields = self.lean_fields(s, f, lambda names, scale: self.sums(s, step, names))
        retraced = bool(fields["retraced"])
        return {**fields, **self.period_fields(state, f, step.params, accepted=not retraced)}, retraced

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
