"""Hypergradient descent (Baydin et al. 2018), spec/hypergradient.md (tags HD1–HD9): SGD-HD with optional
heavy-ball or Nesterov momentum, and Adam-HD, in torch on parameter structures; written from the spec page, the
NumPy reference is not called."""

from __future__ import annotations

import math

import torch

from ...errors import StateError
from .. import _hyperparameters as checked
from ._core import COUNTER, PARAM, Layout, Optimizer, as_host_scalar, inner


class DeviceFloat64(Layout):
    """A real scalar kept as a float64 0-d tensor on the parameters' device, in every precision: the float64
    value of the spec without a host synchronisation per step. Shown as a Python float, as the spec's scalar
    field (reading it synchronises; a step does not)."""

    def flat(self, stored, structure):
        return stored.item()

    def store(self, name, value, structure, default):
        return torch.tensor(as_host_scalar(name, value, StateError), dtype=torch.float64, device=structure.device)

    def clone(self, stored):
        return stored.clone()


class Hypergradient(Optimizer):
    algo = "hypergradient"
    layouts = {"step": COUNTER, "alpha": DeviceFloat64(), "direction": PARAM, "m": PARAM, "v": PARAM}

    def initial_state(self, structure, params):
        alpha = torch.tensor(float(self.alpha0), dtype=torch.float64, device=structure.device)
        return {
            "step": 0,
            "alpha": alpha,
            "direction": structure.zeros(),
            "m": structure.zeros(),
            "v": structure.zeros(),
        }

    def _F_(self, state, step):
        s = state.stored
        t = s["step"] + 1
        if self.weight_decay:  # (HD7) g̃_t = g_t + λθ_{t−1}, everywhere after it
            g = torch._foreach_add(step.grad, step.params, alpha=self.weight_decay)
        else:
            g = torch._foreach_clone(step.grad)  # the state must not alias the caller's gradient
        h = -inner(g, s["direction"])  # (HD1) h_t = g̃_t·∇_α u_{t−1}, the step's one reduction
        alpha = s["alpha"] - self.hypergradient_lr * h  # (HD2) additive, accumulated in float64
        m, v = s["m"], s["v"]
        if self.base == "sgd":
            if not self.momentum:  # (HD3) ∇_α u_t = −g̃_t
                direction = g
            else:
                m = torch._foreach_mul(m, self.momentum)  # (HD8) b_t = μ b_{t−1} + g̃_t
                torch._foreach_add_(m, g)
                if self.nesterov:  # (HD9) g̃_t + μ b_t, or the heavy ball b_t
                    direction = torch._foreach_add(g, m, alpha=self.momentum)
                else:
                    direction = torch._foreach_clone(m)
        else:
            beta1, beta2 = self.betas
            m = torch._foreach_mul(m, beta1)  # (HD4)
            torch._foreach_add_(m, g, alpha=1 - beta1)
            v = torch._foreach_mul(v, beta2)
            torch._foreach_addcmul_(v, g, g, value=1 - beta2)
            b1, b2 = 1 - beta1**t, 1 - beta2**t
            if self.convention == "authors_code":  # ε before the bias correction (old torch.optim.Adam form)
                denominator = torch._foreach_sqrt(v)
                direction = torch._foreach_mul(m, math.sqrt(b2) / b1)
            else:  # (HD5) m̂_t/(√v̂_t + ε)
                denominator = torch._foreach_sqrt(torch._foreach_div(v, b2))
                direction = torch._foreach_div(m, b1)
            torch._foreach_add_(denominator, self.eps)
            torch._foreach_div_(direction, denominator)
        s.update(step=t, alpha=alpha, direction=direction, m=m, v=v)

    def _G(self, state, step):
        return torch._foreach_mul(state.stored["direction"], -state.stored["alpha"])  # (HD6) −α_t·direction_t

    def _apply_(self, state, step, params):
        torch._foreach_add_(params, self._G(state, step))


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
    dtype=torch.float64,
    device="cpu",
):
    """SGD-HD / SGDN-HD / Adam-HD (spec/hypergradient.md): the step size α is one float64 scalar on the device."""
    hp, needs = checked.hypergradient(
        base, alpha0, hypergradient_lr, betas, eps, convention, momentum, nesterov, weight_decay
    )
    return Hypergradient(dtype, device, needs, **hp)
