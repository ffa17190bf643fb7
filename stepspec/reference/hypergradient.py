"""Hypergradient descent (Baydin et al. 2018), spec/hypergradient.md: SGD-HD (with the heavy-ball or
Nesterov momentum of the authors' code and Algorithm 5) and Adam-HD, additive step-size update, L2
weight decay as in the code; written from the paper's Algorithms 4–6 and the code's options."""

from __future__ import annotations

import math

import numpy as np

from .._core import Optimizer, State, state
from ..errors import HyperparameterError
from ..spec import check_hyperparameters


@state
class HypergradientState(State):
    step: int  # t
    alpha: float  # α_t, the scalar learning rate step t was taken with (updated before the step)
    direction: np.ndarray  # (n,) −∇_α u_t: the direction u_t = −α_t·direction (g̃_t, a momentum form, or Adam's)
    m: np.ndarray  # (n,) Adam's first moment, or SGD-HD's momentum buffer (zero without momentum)
    v: np.ndarray  # (n,) Adam second moment (zero for SGD-HD)


class Hypergradient(Optimizer):
    algo = "hypergradient"
    State = HypergradientState

    def initial_state(self, theta0):
        zeros = np.zeros_like(theta0)
        return {"step": 0, "alpha": float(self.alpha0), "direction": zeros, "m": zeros, "v": zeros}

    def _F(self, s, obs):
        t = s.step + 1
        g = obs.grad + self.weight_decay * obs.params if self.weight_decay else obs.grad  # (HD7) g̃_t, L2
        h = -float(g @ s.direction)  # (HD1) h_t = g̃_t·∇_α u_{t-1}, with ∇_α u_0 = 0
        alpha = s.alpha - self.hypergradient_lr * h  # (HD2) α_t = α_{t-1} − β h_t (additive)
        if self.base == "sgd":
            if not self.momentum:  # (HD3) ∇_α u_t = −g̃_t
                return HypergradientState(step=t, alpha=alpha, direction=g, m=s.m, v=s.v)
            m = self.momentum * s.m + g  # (HD8) b_t = μ b_{t-1} + g̃_t
            direction = g + self.momentum * m if self.nesterov else m  # (HD9) Nesterov or heavy ball
            return HypergradientState(step=t, alpha=alpha, direction=direction, m=m, v=s.v)
        beta1, beta2 = self.betas
        m = beta1 * s.m + (1 - beta1) * g  # (HD4) Adam's moments
        v = beta2 * s.v + (1 - beta2) * g * g
        b1, b2 = 1 - beta1**t, 1 - beta2**t
        if self.convention == "authors_code":  # ε before the bias correction (old torch.optim.Adam form)
            direction = math.sqrt(b2) / b1 * m / (np.sqrt(v) + self.eps)  # a host factor: keeps m's dtype
        else:
            direction = (m / b1) / (np.sqrt(v / b2) + self.eps)  # (HD5) ∇_α u_t = −m̂_t/(√v̂_t + ε)
        return HypergradientState(step=t, alpha=alpha, direction=direction, m=m, v=v)

    def _G(self, s, obs):
        return -s.alpha * s.direction  # (HD6) u_t = −α_t·direction, with the α_t just updated


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
):
    """SGD-HD / SGDN-HD / Adam-HD, spec/hypergradient.md (Baydin et al. 2018, Algorithms 4–6, additive
    rule; heavy-ball momentum and L2 weight decay as in the authors' code)."""
    hp = check_hyperparameters(
        "hypergradient",
        base=base,
        alpha0=alpha0,
        hypergradient_lr=hypergradient_lr,
        betas=betas,
        eps=eps,
        convention=convention,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    if not isinstance(nesterov, bool):
        raise HyperparameterError("nesterov", f"must be True or False, got {nesterov!r}")
    if base == "adam" and (momentum or nesterov):
        name = "nesterov" if nesterov else "momentum"
        raise HyperparameterError(name, "is an option of SGD-HD; Adam-HD's momentum is betas[0]")
    if nesterov and not momentum:
        raise HyperparameterError("nesterov", "Nesterov momentum needs momentum > 0 (as the authors' SGDHD requires)")
    needs = frozenset({"grad", "params"}) if hp["weight_decay"] else frozenset({"grad"})
    return Hypergradient(needs=needs, nesterov=nesterov, **hp)
