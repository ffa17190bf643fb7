"""Hypergradient descent (Baydin et al. 2018), spec/hypergradient.md: SGD-HD and Adam-HD with the
additive step-size update, written from the paper's Algorithms 4 and 6."""

from __future__ import annotations

import numpy as np

from .._core import Optimizer, State, state
from ..spec import check_hyperparameters


@state
class HypergradientState(State):
    step: int  # t
    alpha: float  # α_t, the scalar learning rate
    direction: np.ndarray  # (n,) −∇_α u_t: the direction u_t = −α_t·direction (g_t, or m̂/(√v̂ + ε))
    m: np.ndarray  # (n,) Adam first moment (zero for SGD-HD)
    v: np.ndarray  # (n,) Adam second moment (zero for SGD-HD)


class Hypergradient(Optimizer):
    algo = "hypergradient"
    State = HypergradientState

    def initial_state(self, theta0):
        zeros = np.zeros_like(theta0)
        return {"step": 0, "alpha": float(self.alpha0), "direction": zeros, "m": zeros, "v": zeros}

    def _F(self, s, obs):
        g, t = obs.grad, s.step + 1
        h = -float(g @ s.direction)  # (HD1) h_t = g_t·∇_α u_{t-1}, with ∇_α u_0 = 0
        alpha = s.alpha - self.hypergradient_lr * h  # (HD2) α_t = α_{t-1} − β h_t (additive)
        if self.base == "sgd":
            return HypergradientState(step=t, alpha=alpha, direction=g, m=s.m, v=s.v)  # (HD3) ∇_α u_t = −g_t
        beta1, beta2 = self.betas
        m = beta1 * s.m + (1 - beta1) * g  # (HD4) Adam's moments
        v = beta2 * s.v + (1 - beta2) * g * g
        b1, b2 = 1 - beta1**t, 1 - beta2**t
        if self.convention == "authors_code":  # ε before the bias correction (old torch.optim.Adam form)
            direction = np.sqrt(b2) / b1 * m / (np.sqrt(v) + self.eps)
        else:
            direction = (m / b1) / (np.sqrt(v / b2) + self.eps)  # (HD5) ∇_α u_t = −m̂_t/(√v̂_t + ε)
        return HypergradientState(step=t, alpha=alpha, direction=direction, m=m, v=v)

    def _G(self, s, obs):
        return -s.alpha * s.direction  # (HD6) u_t = −α_t·direction, with the α_t just updated


def hypergradient(base="sgd", alpha0=1e-3, hypergradient_lr=1e-3, betas=(0.9, 0.999), eps=1e-8, convention="paper"):
    """SGD-HD / Adam-HD, spec/hypergradient.md (Baydin et al. 2018, Algorithms 4 and 6, additive rule)."""
    hp = check_hyperparameters(
        "hypergradient",
        base=base,
        alpha0=alpha0,
        hypergradient_lr=hypergradient_lr,
        betas=betas,
        eps=eps,
        convention=convention,
    )
    return Hypergradient(**hp)
