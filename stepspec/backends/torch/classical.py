"""Classical optimizers in torch, spec/classical.md (tags C1–C17), on parameter structures with
multi-tensor (``torch._foreach_*``) kernels: no Python loop over elements, one pass per operation over
all parameter tensors. Written from the spec page; the NumPy reference is not called."""

from __future__ import annotations

import math

import torch

from ...errors import StateError
from ._core import COUNTER, PARAM, Optimizer, hyperparameters


def _needs_params(weight_decay: float) -> frozenset:
    return frozenset({"grad", "params"}) if weight_decay != 0 else frozenset({"grad"})


def _bias_correction(beta: float, step: int) -> float:
    if step < 1:
        raise StateError("step", "G is defined on S_t for t ≥ 1 (bias correction 1 − β^0 = 0); apply F first")
    return 1.0 - beta**step


def _decayed(grad, params, weight_decay):
    """(C6, C12) coupled L2: g + λθ (the gradient itself without decay)."""
    return torch._foreach_add(grad, params, alpha=weight_decay) if weight_decay else grad


# --------------------------------------------------------------------------- SGD, momentum, NAG


class SGD(Optimizer):
    algo = "sgd"
    layouts = {}

    def initial_state(self, structure, params):
        return {}

    def _F_(self, state, step):
        pass  # (C1) S_t = S_{t-1}

    def _G(self, state, step):
        return torch._foreach_mul(step.grad, -self.lr)  # (C2)

    def _apply_(self, state, step, params):
        torch._foreach_add_(params, step.grad, alpha=-self.lr)


class Momentum(Optimizer):
    algo = "momentum"
    layouts = {"m": PARAM}

    def initial_state(self, structure, params):
        return {"m": structure.zeros()}

    def _F_(self, state, step):
        m = state.stored["m"]
        torch._foreach_mul_(m, self.beta)  # (C3) m_t = β m_{t-1} + g_t
        torch._foreach_add_(m, step.grad)

    def _G(self, state, step):
        return torch._foreach_mul(state.stored["m"], -self.lr)  # (C4)

    def _apply_(self, state, step, params):
        torch._foreach_add_(params, state.stored["m"], alpha=-self.lr)


class NAG(Momentum):
    algo = "nag"

    def _G(self, state, step):  # (C5) −lr·(g_t + β m_t)
        return torch._foreach_mul(torch._foreach_add(step.grad, state.stored["m"], alpha=self.beta), -self.lr)

    def _apply_(self, state, step, params):
        torch._foreach_add_(params, step.grad, alpha=-self.lr)
        torch._foreach_add_(params, state.stored["m"], alpha=-self.lr * self.beta)


# --------------------------------------------------------------------------- Adam, AdamW


class Adam(Optimizer):
    algo = "adam"
    layouts = {"step": COUNTER, "m": PARAM, "v": PARAM}
    decoupled = False

    def initial_state(self, structure, params):
        return {"step": 0, "m": structure.zeros(), "v": structure.zeros()}

    def _F_(self, state, step):
        beta1, beta2 = self.betas
        g = step.grad if self.decoupled else _decayed(step.grad, step.params, self.weight_decay)
        m, v = state.stored["m"], state.stored["v"]
        torch._foreach_mul_(m, beta1)  # (C7) m_t = β1 m_{t-1} + (1 − β1) g_t
        torch._foreach_add_(m, g, alpha=1 - beta1)
        torch._foreach_mul_(v, beta2)  # (C8) v_t = β2 v_{t-1} + (1 − β2) g_t²
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)
        state.stored["step"] += 1

    def _direction(self, state):
        """m̂_t/(√v̂_t + ε) (C9, C10), the bias corrections folded into host scalars."""
        beta1, beta2 = self.betas
        t = state.stored["step"]
        b1, b2 = _bias_correction(beta1, t), _bias_correction(beta2, t)
        denominator = torch._foreach_sqrt(state.stored["v"])
        torch._foreach_div_(denominator, math.sqrt(b2))
        torch._foreach_add_(denominator, self.eps)
        direction = torch._foreach_div(state.stored["m"], denominator)
        torch._foreach_div_(direction, b1)
        return direction

    def _G(self, state, step):
        update = self._direction(state)
        if self.decoupled and self.weight_decay:  # (C11) −lr·(λθ + m̂/(√v̂ + ε))
            torch._foreach_add_(update, step.params, alpha=self.weight_decay)
        torch._foreach_mul_(update, -self.lr)
        return update


class AdamW(Adam):
    algo = "adamw"
    decoupled = True


# --------------------------------------------------------------------------- RMSprop


class RMSprop(Optimizer):
    algo = "rmsprop"
    layouts = {"v": PARAM}

    def initial_state(self, structure, params):
        return {"v": structure.zeros()}

    def _F_(self, state, step):
        g = _decayed(step.grad, step.params, self.weight_decay)
        v = state.stored["v"]
        torch._foreach_mul_(v, self.alpha)  # (C13) v_t = α v_{t-1} + (1 − α) g_t²
        torch._foreach_addcmul_(v, g, g, value=1 - self.alpha)

    def _G(self, state, step):
        g = _decayed(step.grad, step.params, self.weight_decay)
        denominator = torch._foreach_sqrt(state.stored["v"])
        torch._foreach_add_(denominator, self.eps)
        update = torch._foreach_div(g, denominator)  # (C14) −lr·g_t/(√v_t + ε)
        torch._foreach_mul_(update, -self.lr)
        return update


# --------------------------------------------------------------------------- Lion


class Lion(Optimizer):
    algo = "lion"
    layouts = {"m": PARAM, "c": PARAM}

    def initial_state(self, structure, params):
        return {"m": structure.zeros(), "c": structure.zeros()}

    def _F_(self, state, step):
        beta1, beta2 = self.betas
        m = state.stored["m"]
        c = torch._foreach_mul(m, beta1)  # (C15) c_t = β1 m_{t-1} + (1 − β1) g_t
        torch._foreach_add_(c, step.grad, alpha=1 - beta1)
        torch._foreach_mul_(m, beta2)  # (C16) m_t = β2 m_{t-1} + (1 − β2) g_t
        torch._foreach_add_(m, step.grad, alpha=1 - beta2)
        state.stored["c"] = c

    def _G(self, state, step):
        update = torch._foreach_sign(state.stored["c"])  # (C17) −lr·(sign(c_t) + λθ)
        if self.weight_decay:
            torch._foreach_add_(update, step.params, alpha=self.weight_decay)
        torch._foreach_mul_(update, -self.lr)
        return update


# --------------------------------------------------------------------------- constructors (the spec's signatures)


def sgd(lr, *, dtype=torch.float64, device="cpu"):
    return SGD(dtype, device, **hyperparameters("sgd", lr=lr))


def momentum(lr, beta=0.9, *, dtype=torch.float64, device="cpu"):
    return Momentum(dtype, device, **hyperparameters("momentum", lr=lr, beta=beta))


def nag(lr, beta=0.9, *, dtype=torch.float64, device="cpu"):
    return NAG(dtype, device, **hyperparameters("nag", lr=lr, beta=beta))


def adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, dtype=torch.float64, device="cpu"):
    hp = hyperparameters("adam", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return Adam(dtype, device, needs=_needs_params(hp["weight_decay"]), **hp)


def adamw(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *, dtype=torch.float64, device="cpu"):
    hp = hyperparameters("adamw", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return AdamW(dtype, device, needs=_needs_params(hp["weight_decay"]), **hp)


def rmsprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, *, dtype=torch.float64, device="cpu"):
    hp = hyperparameters("rmsprop", lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay)
    return RMSprop(dtype, device, needs=_needs_params(hp["weight_decay"]), **hp)


def lion(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, dtype=torch.float64, device="cpu"):
    hp = hyperparameters("lion", lr=lr, betas=betas, weight_decay=weight_decay)
    return Lion(dtype, device, needs=_needs_params(hp["weight_decay"]), **hp)
