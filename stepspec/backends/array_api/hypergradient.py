"""Hypergradient descent (Baydin et al. 2018) on the array API, spec/hypergradient.md (tags HD1–HD9): SGD-HD with
optional heavy-ball or Nesterov momentum, and Adam-HD. Written from the spec page; the reference is not called.

Per step: one reduction round, h_t = g̃_t·∇_α u_{t−1} (HD1) as per-parameter partial sums; one elementwise pass
per parameter for the new direction and moments (and θ in ``step``), except SGD-HD without momentum in F, whose
direction is g̃_t itself (copied when it is the caller's gradient); with λ ≠ 0 one more pass before the reduction,
for g̃_t = g_t + λθ_{t−1} (HD7), which the reduction reads. Host reads: the finite check of g, and of θ when λ ≠ 0
or in ``step``; none for α.

α is one scalar that (HD2) changes by β h_t per step, an increment that can lie far below α's round-off
(Adam-HD's recommended β = 1e-8): added to a float32 α it would be lost and α would not move. The reference
keeps α as a host float64; here it is a float64 0-d array on the device in every precision (as the torch
backend does), so (HD2) accumulates in float64 without reading h_t to the host, and the step (HD6) takes α
rounded to the working precision. The state shows α as a Python float (reading it synchronises; a step does
not).
"""

from __future__ import annotations

import math

from ...errors import StateError
from .. import _hyperparameters as checked
from ._core import COUNTER, PARAM, Layout, Optimizer, as_host_scalar, over_leaves

# --------------------------------------------------------------------------- the elementwise passes


def _pass_decayed(xp):
    return lambda g, theta, weight_decay: g + weight_decay * theta  # (HD7) g̃_t = g_t + λθ_{t−1}


def _pass_sgd_step(xp):
    return lambda theta, g, alpha: theta - alpha * g  # (HD3, HD6) u_t = −α_t g̃_t


def _pass_heavy_ball(xp):
    return lambda b, g, momentum: momentum * b + g  # (HD8) b_t = μ b_{t−1} + g̃_t, the direction (HD9)


def _pass_heavy_ball_step(xp):
    def step(theta, b, g, momentum, alpha):
        b = momentum * b + g  # (HD8), the direction (HD9)
        return b, theta - alpha * b  # (HD6)

    return step


def _pass_nesterov(xp):
    def state(b, g, momentum):
        b = momentum * b + g  # (HD8)
        return b, g + momentum * b  # (HD9) Nesterov: g̃_t + μ b_t

    return state


def _pass_nesterov_step(xp):
    def step(theta, b, g, momentum, alpha):
        b = momentum * b + g  # (HD8)
        direction = g + momentum * b  # (HD9)
        return b, direction, theta - alpha * direction  # (HD6)

    return step


def _pass_adam(xp):
    # (HD4) the moments; (HD5) the direction (m·scale)/(√(v·variance_scale) + ε): scale = 1/(1 − β1ᵗ) and
    # variance_scale = 1/(1 − β2ᵗ) in the paper's convention, √(1 − β2ᵗ)/(1 − β1ᵗ) and 1 in the authors' code's
    def state(m, v, g, beta1, beta2, one_minus_beta1, one_minus_beta2, scale, variance_scale, eps):
        m = beta1 * m + one_minus_beta1 * g
        v = beta2 * v + one_minus_beta2 * (g * g)
        return m, v, (m * scale) / (xp.sqrt(v * variance_scale) + eps)

    return state


def _pass_adam_step(xp):
    def step(theta, m, v, g, beta1, beta2, one_minus_beta1, one_minus_beta2, scale, variance_scale, eps, alpha):
        m = beta1 * m + one_minus_beta1 * g  # (HD4)
        v = beta2 * v + one_minus_beta2 * (g * g)
        direction = (m * scale) / (xp.sqrt(v * variance_scale) + eps)  # (HD5)
        return m, v, direction, theta - alpha * direction  # (HD6)

    return step


def _pass_update(xp):
    return lambda direction, alpha: -alpha * direction  # (HD6) u_t = −α_t·direction_t


# --------------------------------------------------------------------------- α: a float64 scalar on the device


class DeviceFloat64(Layout):
    """A real scalar kept as a float64 0-d array on the namespace's device, in every precision: the spec's float64
    value without a host synchronisation per step. Shown as a Python float (reading it synchronises)."""

    def flat(self, stored, structure):
        return float(stored)

    def store(self, name, value, structure, default):
        ns = structure.ns
        return ns.xp.asarray(as_host_scalar(ns, name, value, StateError), dtype=ns.xp.float64, device=ns.device)


# --------------------------------------------------------------------------- hypergradient descent


class Hypergradient(Optimizer):
    algo = "hypergradient"
    layouts = {"step": COUNTER, "alpha": DeviceFloat64(), "direction": PARAM, "m": PARAM, "v": PARAM}

    def initial_state(self, structure, params):
        return {
            "step": 0,
            "alpha": self.layouts["alpha"].store("alpha0", self.alpha0, structure, None),
            "direction": structure.zeros(),
            "m": structure.zeros(),
            "v": structure.zeros(),
        }

    def _gradient(self, step) -> list:
        """g̃_t (HD7): g_t + λθ_{t−1}, a new array; without λ, the caller's gradient."""
        if not self.weight_decay:
            return step.grad
        return over_leaves(self.ns.fused(_pass_decayed), [step.grad, step.params], self.weight_decay)

    def _step_size(self, state, g) -> object:
        """(HD1, HD2) α_t = α_{t−1} − β h_t = α_{t−1} + β g̃_t·direction_{t−1}: the step's one reduction, added
        in float64."""
        inner = self.ns.inner(g, state.stored["direction"])
        return state.stored["alpha"] + self.hypergradient_lr * self.ns.xp.astype(inner, self.ns.xp.float64)

    def _adam_scalars(self, t: int) -> tuple:
        """β1, β2, 1 − β1, 1 − β2, and the convention's two scales of (HD5) at step t, host floats."""
        beta1, beta2 = self.betas
        bias1, bias2 = 1 - beta1**t, 1 - beta2**t
        if self.convention == "authors_code":  # ε before the bias correction (old torch.optim.Adam form)
            scales = (math.sqrt(bias2) / bias1, 1.0)
        else:
            scales = (1 / bias1, 1 / bias2)
        return (beta1, beta2, 1 - beta1, 1 - beta2, *scales, self.eps)

    def _recurrence(self, state, g, t: int) -> tuple:
        """(HD3–HD9) in this configuration: F's pass (None: no state to update), the step's pass (the same, then
        θ_t = θ_{t−1} − α_t·direction_t (HD6), θ its first array and α its last scalar), their arrays and
        scalars, and the fields F's pass returns."""
        s = state.stored
        if self.base == "adam":
            return _pass_adam, _pass_adam_step, [s["m"], s["v"], g], self._adam_scalars(t), ("m", "v", "direction")
        if self.nesterov:
            return _pass_nesterov, _pass_nesterov_step, [s["m"], g], (self.momentum,), ("m", "direction")
        if self.momentum:
            return _pass_heavy_ball, _pass_heavy_ball_step, [s["m"], g], (self.momentum,), ("m",)
        return None, _pass_sgd_step, [g], (), ()

    def _run_pass(self, make, arrays, scalars, outputs: int) -> tuple:
        """The pass ``make`` over the parameters: a tuple of ``outputs`` lists, one per result."""
        results = over_leaves(self.ns.fused(make), arrays, *scalars, outputs=outputs)
        return results if outputs > 1 else (results,)

    def _fields(self, names, results, g) -> dict:
        """The fields of S_t a pass returned, and the direction where it is not one of them: the heavy ball's
        buffer b_t (HD9), or SGD's g̃_t (HD3), a copy when it is the caller's gradient (whose memory the caller
        may reuse)."""
        fields = dict(zip(names, results))
        if "m" in fields:
            fields.setdefault("direction", fields["m"])
        elif self.weight_decay:
            fields["direction"] = g
        else:
            fields["direction"] = [self.ns.xp.asarray(x, copy=True) for x in g]
        return fields

    def _F(self, state, step):
        g = self._gradient(step)
        t = state.stored["step"] + 1
        state_pass, _, arrays, scalars, names = self._recurrence(state, g, t)
        results = self._run_pass(state_pass, arrays, scalars, len(names)) if names else ()
        return {"step": t, "alpha": self._step_size(state, g), **self._fields(names, results, g)}

    def _G(self, state, step):
        alpha = self.ns.xp.astype(state.stored["alpha"], self.ns.float)
        return over_leaves(self.ns.fused(_pass_update), [state.stored["direction"]], alpha)

    def _step(self, state, step, params):
        g = self._gradient(step)
        t = state.stored["step"] + 1
        alpha = self._step_size(state, g)
        _, step_pass, arrays, scalars, names = self._recurrence(state, g, t)
        working_alpha = self.ns.xp.astype(alpha, self.ns.float)
        *results, theta = self._run_pass(step_pass, [params, *arrays], (*scalars, working_alpha), len(names) + 1)
        return {"step": t, "alpha": alpha, **self._fields(names, results, g)}, theta


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
    ns,
):
    """SGD-HD / SGDN-HD / Adam-HD (spec/hypergradient.md): the step size α is one float64 scalar on the device."""
    hp, needs = checked.hypergradient(
        base, alpha0, hypergradient_lr, betas, eps, convention, momentum, nesterov, weight_decay
    )
    return Hypergradient(ns, needs=needs, **hp)
