"""Classical optimizers, spec/classical.md: the reduction targets and building blocks.

Conventions are torch.optim's wherever torch has the algorithm (SGD with dampening 0, Adam, AdamW,
RMSprop); Lion follows Chen et al. 2023, Algorithm 2. Equation tags (C1)… are those of the spec page.
"""

from __future__ import annotations

import numpy as np

from .._core import Optimizer, State, state
from ..errors import StateError
from ..spec import check_hyperparameters


def _needs_params(weight_decay: float) -> frozenset:
    """Weight decay reads θ_{t-1}; without it the observation is just g_t (Def. 3.1)."""
    return frozenset({"grad", "params"}) if weight_decay != 0 else frozenset({"grad"})


def _bias_correction(beta: float, step: int) -> float:
    if step < 1:
        raise StateError("step", "G is defined on S_t for t ≥ 1 (bias correction 1 − β^0 = 0); apply F first")
    return 1.0 - beta**step


# --------------------------------------------------------------------------- SGD


@state
class SGDState(State):
    """SGD keeps no memory (k = 0)."""


class SGD(Optimizer):
    algo = "sgd"
    State = SGDState

    def initial_state(self, theta0):
        return {}

    def _F(self, s, obs):
        return s  # (C1) S_t = S_{t-1}

    def _G(self, s, obs):
        return -self.lr * obs.grad  # (C2) θ_t = θ_{t-1} − lr·g_t


def sgd(lr):
    """Plain SGD, spec/classical.md#sgd (torch.optim.SGD with momentum=0)."""
    return SGD(**check_hyperparameters("sgd", lr=lr))


# --------------------------------------------------------------------------- momentum and NAG


@state
class MomentumState(State):
    m: np.ndarray  # (n,) momentum buffer (torch: momentum_buffer)


class Momentum(Optimizer):
    algo = "momentum"
    State = MomentumState

    def initial_state(self, theta0):
        return {"m": np.zeros_like(theta0)}

    def _F(self, s, obs):
        return MomentumState(m=self.beta * s.m + obs.grad)  # (C3) m_t = β m_{t-1} + g_t

    def _G(self, s, obs):
        return -self.lr * s.m  # (C4) θ_t = θ_{t-1} − lr·m_t


def momentum(lr, beta=0.9):
    """Heavy-ball momentum, spec/classical.md#momentum (torch.optim.SGD(momentum=beta, dampening=0))."""
    return Momentum(**check_hyperparameters("momentum", lr=lr, beta=beta))


class NAG(Momentum):
    algo = "nag"

    def _G(self, s, obs):
        return -self.lr * (obs.grad + self.beta * s.m)  # (C5) θ_t = θ_{t-1} − lr·(g_t + β m_t)


def nag(lr, beta=0.9):
    """Nesterov momentum, spec/classical.md#nag (torch.optim.SGD(momentum=beta, nesterov=True))."""
    return NAG(**check_hyperparameters("nag", lr=lr, beta=beta))


# --------------------------------------------------------------------------- Adam and AdamW


@state
class AdamState(State):
    step: int  # t, the number of F applications
    m: np.ndarray  # (n,) first moment (torch: exp_avg)
    v: np.ndarray  # (n,) second moment (torch: exp_avg_sq)


class Adam(Optimizer):
    algo = "adam"
    State = AdamState

    def initial_state(self, theta0):
        return {"step": 0, "m": np.zeros_like(theta0), "v": np.zeros_like(theta0)}

    def _decayed_gradient(self, obs):
        if self.weight_decay == 0:
            return obs.grad
        return obs.grad + self.weight_decay * obs.params  # (C6) coupled L2: g_t + λ θ_{t-1}

    def _F(self, s, obs):
        beta1, beta2 = self.betas
        g = self._decayed_gradient(obs)
        return AdamState(
            step=s.step + 1,
            m=beta1 * s.m + (1 - beta1) * g,  # (C7) m_t = β1 m_{t-1} + (1 − β1) g_t
            v=beta2 * s.v + (1 - beta2) * g * g,  # (C8) v_t = β2 v_{t-1} + (1 − β2) g_t²
        )

    def _adaptive_step(self, s):
        beta1, beta2 = self.betas
        m_hat = s.m / _bias_correction(beta1, s.step)  # (C9) m̂_t = m_t / (1 − β1^t)
        v_hat = s.v / _bias_correction(beta2, s.step)  # (C9) v̂_t = v_t / (1 − β2^t)
        return m_hat / (np.sqrt(v_hat) + self.eps)

    def _G(self, s, obs):
        return -self.lr * self._adaptive_step(s)  # (C10) θ_t = θ_{t-1} − lr·m̂_t / (√v̂_t + ε)


def adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """Adam, spec/classical.md#adam (torch.optim.Adam, amsgrad=False)."""
    hp = check_hyperparameters("adam", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return Adam(needs=_needs_params(hp["weight_decay"]), **hp)


class AdamW(Adam):
    algo = "adamw"

    def _decayed_gradient(self, obs):
        return obs.grad  # decoupled: the decay is in G, not in the moments

    def _G(self, s, obs):
        decay = self.weight_decay * obs.params if self.weight_decay else 0.0
        return -self.lr * (decay + self._adaptive_step(s))  # (C11) θ_t = θ_{t-1} − lr·(λ θ_{t-1} + m̂_t/(√v̂_t + ε))


def adamw(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
    """AdamW, spec/classical.md#adamw (torch.optim.AdamW, amsgrad=False)."""
    hp = check_hyperparameters("adamw", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return AdamW(needs=_needs_params(hp["weight_decay"]), **hp)


# --------------------------------------------------------------------------- RMSprop


@state
class RMSpropState(State):
    v: np.ndarray  # (n,) running mean of squared gradients (torch: square_avg)


class RMSprop(Optimizer):
    algo = "rmsprop"
    State = RMSpropState

    def initial_state(self, theta0):
        return {"v": np.zeros_like(theta0)}

    def _decayed_gradient(self, obs):
        if self.weight_decay == 0:
            return obs.grad
        return obs.grad + self.weight_decay * obs.params  # (C12) coupled L2, as in torch

    def _F(self, s, obs):
        g = self._decayed_gradient(obs)
        return RMSpropState(v=self.alpha * s.v + (1 - self.alpha) * g * g)  # (C13) v_t = α v_{t-1} + (1 − α) g_t²

    def _G(self, s, obs):
        return -self.lr * self._decayed_gradient(obs) / (np.sqrt(s.v) + self.eps)  # (C14)


def rmsprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0):
    """RMSprop, spec/classical.md#rmsprop (torch.optim.RMSprop, momentum=0, centered=False)."""
    hp = check_hyperparameters("rmsprop", lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay)
    return RMSprop(needs=_needs_params(hp["weight_decay"]), **hp)


# --------------------------------------------------------------------------- Lion


@state
class LionState(State):
    m: np.ndarray  # (n,) momentum m_t
    c: np.ndarray  # (n,) interpolation c_t = β1 m_{t-1} + (1 − β1) g_t, whose sign G applies


class Lion(Optimizer):
    algo = "lion"
    State = LionState

    def initial_state(self, theta0):
        return {"m": np.zeros_like(theta0), "c": np.zeros_like(theta0)}

    def _F(self, s, obs):
        beta1, beta2 = self.betas
        return LionState(
            m=beta2 * s.m + (1 - beta2) * obs.grad,  # (C16) m_t = β2 m_{t-1} + (1 − β2) g_t
            c=beta1 * s.m + (1 - beta1) * obs.grad,  # (C15) c_t = β1 m_{t-1} + (1 − β1) g_t
        )

    def _G(self, s, obs):
        decay = self.weight_decay * obs.params if self.weight_decay else 0.0
        return -self.lr * (np.sign(s.c) + decay)  # (C17) θ_t = θ_{t-1} − lr·(sign(c_t) + λ θ_{t-1})


def lion(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
    """Lion, spec/classical.md#lion (Chen et al. 2023, Algorithm 2; torch.optim has no Lion)."""
    hp = check_hyperparameters("lion", lr=lr, betas=betas, weight_decay=weight_decay)
    return Lion(needs=_needs_params(hp["weight_decay"]), **hp)
