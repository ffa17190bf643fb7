"""ELRA in torch, spec/elra.md (tags E1–E14): ``elra`` (keeps G_{t−1}) and ``elra_lean`` (Sec. 3.6: one stored
vector), on parameter structures. Written from the spec page; the NumPy reference is not called.

A step is: the retrace decision (E7), on the host from the loss and host state alone; the step's inner
products and norms as per-tensor partial sums, combined by ``_core.reduce_sum`` in one round and read to
the host once (the step's one host synchronisation, skipped when no scalar is needed: a lean retrace, a
first step without crop or warm-up); the α rules (E1–E6), the period statistics and the batch controller
(E8–E9) in host floats (``stepspec.backends._elra_host``, shared with the array-API backend); then elementwise
passes over the tensors. Host scalars are float64 in every
precision, as the spec's state table has them.
"""

from __future__ import annotations

import torch

from ...errors import StateError
from ...reference.elra import HISTORY
from .. import _hyperparameters as checked
from .._elra_host import ELRA_FIELDS, LEAN_FIELDS, LEAN_SUMS, HostRules
from . import _fused
from ._core import COUNTER, HOST, PARAM, WHOLE, Layout, Optimizer, as_tensors, reduce_sum


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


class _ELRABase(HostRules, Optimizer):
    """What both forms share on torch: the state's layouts and initial values, and boosting's (E11) vectors around
    the shared host rules (``_elra_host.HostRules``: α, the retrace rule, the periods, the batch controller)."""

    def __init__(self, dtype, device, **hp):
        super().__init__(dtype, device, needs=frozenset({"grad", "params", "loss"}), **hp)
        self.layouts = self.state_layouts(COUNTER, HOST, PARAM, HostHistory(), WHOLE)

    def common_initial_state(self, structure, params) -> dict:
        if self.boost:
            x_sum, x_mean = structure.zeros(), structure.zeros()
        else:
            x_sum, x_mean = (torch.zeros(0, dtype=structure.dtype, device=structure.device) for _ in range(2))
        return {
            **self.common_host_state(),
            "x_prev": [p.clone() for p in params],
            "means": torch.zeros(HISTORY, dtype=structure.dtype),
            "x_sum": x_sum,
            "x_mean": x_mean,
        }

    @staticmethod
    def shifted_means(means: torch.Tensor, mean: float) -> torch.Tensor:
        """The stored history with the closing period's f̄ in front, in the history's precision."""
        return torch.cat([torch.tensor([mean], dtype=means.dtype), means[:-1]])

    def account_period_(self, s: dict, f: float, theta: list[torch.Tensor], accepted: bool) -> None:
        """The period's host fields (``period_host_fields``), and boosting's (E11) x_sum and, when the period
        closes, x_mean."""
        fields, closed = self.period_host_fields(s, f, accepted)
        if self.boost:
            if accepted:
                torch._foreach_add_(s["x_sum"], theta)
            if closed:
                torch._foreach_copy_(s["x_mean"], s["x_sum"])
                torch._foreach_div_(s["x_mean"], closed)
                torch._foreach_zero_(s["x_sum"])
        s.update(fields)


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

    @staticmethod
    def host_sums(s: dict, step, reduce, names: tuple[str, ...], scale: float) -> dict[str, float]:
        """The sums ``elra_fields`` and ``authors_fields`` ask for, from the ``SUMS`` that ``reduce(s, step,
        names)`` returns in one round: the denominator D = ‖G_{t−1}‖² − ⟨G̃_t, G_{t−1}⟩ of (E1) from ‖G_{t−1}‖² and
        ⟨G_t, G_{t−1}⟩ (G̃_t = scale·G_t)."""
        wanted = tuple(name for name in SUMS if name in names or name == "inner" and "denominator" in names)
        sums = dict(zip(wanted, reduce(s, step, wanted)))
        if "inner" in sums:
            sums["denominator"] = sums["g_prev_sq"] - scale * sums.pop("inner")
        return sums

    def advance_host_(self, s: dict, step, reduce) -> tuple[bool, float]:
        """Everything of F but the vectors x_{t−1}, G_{t−1}: the host fields (``elra_fields``) around the step's
        one round ``reduce(s, step, names)`` of ``SUMS`` (host floats), and the period statistics. Returns
        (retraced, the gradient scale of E10)."""
        fields, scale = self.elra_fields(
            s, step.loss, lambda names, scale: self.host_sums(s, step, reduce, names, scale)
        )
        retraced = bool(fields["retraced"])
        self.account_period_(s, step.loss, step.params, accepted=not retraced)
        s.update(fields)
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
        s, theta, alpha_prev = state.stored, step.params, state.stored["alpha"]
        fields = self.authors_fields(
            s, step.loss, state.structure.n, lambda names, scale: self.host_sums(s, step, self.eager_sums, names, scale)
        )
        retraced = bool(fields.get("retraced", 0))
        self.account_period_(s, step.loss, theta, accepted=not retraced)
        torch._foreach_copy_(s["x_prev"], theta)
        if retraced:  # x_{t−1} rebuilt as x_t + α_{t−1} G_{t−1}
            torch._foreach_add_(s["x_prev"], s["g_prev"], alpha=alpha_prev)
        else:
            torch._foreach_copy_(s["g_prev"], step.grad)
        s.update(fields)


# --------------------------------------------------------------------------- elra_lean


class LeanELRA(_ELRABase):
    """Sec. 3.6: only x_{t−1} is stored. (E13) is evaluated as ⟨ω x_{t−1} − x_t, G_t⟩/α_{t−1}, the same
    inner product by linearity, with the difference formed per entry: it does not cancel between two
    sums of size ‖x‖‖G‖ as ω⟨x_{t−1}, G_t⟩ − ⟨x_t, G_t⟩ would (spec/elra.md#elra_lean, accuracy)."""

    algo = "elra_lean"
    own_fields = LEAN_FIELDS

    def initial_state(self, structure, params):
        return {
            **self.common_initial_state(structure, params),
            **self.lean_host_state(),
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

    def advance_host_(self, s: dict, step, reduce) -> tuple[bool, float]:
        """Everything of F but the vector x_{t−1}: the host fields (``lean_fields``) around the step's one round
        ``reduce(s, step, names)`` of ``LEAN_SUMS`` (host floats), and the period statistics. Returns (retraced,
        the gradient scale of E10)."""
        fields = self.lean_fields(s, step.loss, lambda names, scale: dict(zip(names, reduce(s, step, names))))
        retraced = bool(fields["retraced"])
        self.account_period_(s, step.loss, step.params, accepted=not retraced)
        s.update(fields)
        return retraced, fields["grad_scale"]

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
