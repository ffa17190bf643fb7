"""Classical optimizers in jax, spec/classical.md (tags C1–C17), as pure functions over parameter pytrees
(``jax.tree_util.tree_map``), compiled once per algorithm, structure and dtype (``_core.Optimizer``).
Written from the spec page; the NumPy reference is not called.

Host-derived constants are traced scalars beside the hyperparameters, so that float32 keeps what a
float32 subtraction would lose: 1 − β (β = 0.999 rounded to float32 leaves 1 − β with a relative error
of 6e-5), and log β for the bias corrections 1 − β^t = −expm1(t log β), accurate to a few roundings at
every t in either precision (−inf for β = 0, where the correction is 1).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ...errors import StateError
from ._core import COUNTER, PARAM, Optimizer, hyperparameters, log


def _needs_params(weight_decay: float) -> frozenset:
    return frozenset({"grad", "params"}) if weight_decay != 0 else frozenset({"grad"})


def _map(function, *trees):
    return jax.tree_util.tree_map(function, *trees)


def _decayed(grad, params, weight_decay):
    """(C6, C12) coupled L2: g + λθ; the gradient itself without decay (params None)."""
    return grad if params is None else _map(lambda g, p: g + weight_decay * p, grad, params)


# --------------------------------------------------------------------------- SGD, momentum, NAG


class SGDState(NamedTuple):
    """(C1): SGD keeps no state."""


class SGD(Optimizer):
    algo = "sgd"
    layouts = {}
    StateTree = SGDState

    def initial_state(self, structure):
        return SGDState()

    def scalars(self):
        return self.as_scalars(lr=self.lr)

    @staticmethod
    def step_F(scalars, static, state, step):
        return state  # (C1) S_t = S_{t-1}

    @staticmethod
    def step_G(scalars, static, state, step):
        grad = step.grad
        return _map(lambda g: -scalars["lr"] * g, grad)  # (C2)


class MomentumState(NamedTuple):
    m: object


class Momentum(Optimizer):
    algo = "momentum"
    layouts = {"m": PARAM}
    StateTree = MomentumState

    def initial_state(self, structure):
        return MomentumState(m=structure.zeros())

    def scalars(self):
        return self.as_scalars(lr=self.lr, beta=self.beta)

    @staticmethod
    def step_F(scalars, static, state, step):
        grad = step.grad
        return MomentumState(m=_map(lambda m, g: scalars["beta"] * m + g, state.m, grad))  # (C3)

    @staticmethod
    def step_G(scalars, static, state, step):
        return _map(lambda m: -scalars["lr"] * m, state.m)  # (C4)


class NAG(Momentum):
    algo = "nag"

    @staticmethod
    def step_G(scalars, static, state, step):
        grad = step.grad
        lr, beta = scalars["lr"], scalars["beta"]
        return _map(lambda g, m: -lr * (g + beta * m), grad, state.m)  # (C5)


# --------------------------------------------------------------------------- Adam, AdamW


class AdamState(NamedTuple):
    step: jax.Array
    m: object
    v: object


class Adam(Optimizer):
    algo = "adam"
    layouts = {"step": COUNTER, "m": PARAM, "v": PARAM}
    StateTree = AdamState
    decoupled = False

    def initial_state(self, structure):
        return AdamState(step=COUNTER.store("step", 0, structure), m=structure.zeros(), v=structure.zeros())

    def scalars(self):
        beta1, beta2 = self.betas
        return self.as_scalars(
            lr=self.lr,
            beta1=beta1,
            beta2=beta2,
            one_minus_beta1=1 - beta1,
            one_minus_beta2=1 - beta2,
            log_beta1=log(beta1),
            log_beta2=log(beta2),
            eps=self.eps,
            weight_decay=self.weight_decay,
        )

    def static(self):
        return (self.decoupled,)

    def check_G(self, state):
        if int(state.tree.step) < 1:
            raise StateError("step", "G is defined on S_t for t ≥ 1 (bias correction 1 − β^0 = 0); apply F first")

    @staticmethod
    def step_F(scalars, static, state, step):
        grad, params = step.grad, step.params
        (decoupled,) = static
        s = scalars
        g = grad if decoupled else _decayed(grad, params, s["weight_decay"])
        return AdamState(
            step=state.step + 1,
            m=_map(lambda m, g: s["beta1"] * m + s["one_minus_beta1"] * g, state.m, g),  # (C7)
            v=_map(lambda v, g: s["beta2"] * v + s["one_minus_beta2"] * g * g, state.v, g),  # (C8)
        )

    @staticmethod
    def step_G(scalars, static, state, step):
        params = step.params
        (decoupled,) = static
        s = scalars
        bias1 = -jnp.expm1(state.step * s["log_beta1"])  # (C9) 1 − β1^t
        bias2 = -jnp.expm1(state.step * s["log_beta2"])  # (C9) 1 − β2^t
        direction = _map(lambda m, v: (m / bias1) / (jnp.sqrt(v / bias2) + s["eps"]), state.m, state.v)  # (C10)
        if decoupled and params is not None:
            return _map(lambda d, p: -s["lr"] * (s["weight_decay"] * p + d), direction, params)  # (C11)
        return _map(lambda d: -s["lr"] * d, direction)


class AdamW(Adam):
    algo = "adamw"
    decoupled = True


# --------------------------------------------------------------------------- RMSprop


class RMSpropState(NamedTuple):
    v: object


class RMSprop(Optimizer):
    algo = "rmsprop"
    layouts = {"v": PARAM}
    StateTree = RMSpropState

    def initial_state(self, structure):
        return RMSpropState(v=structure.zeros())

    def scalars(self):
        return self.as_scalars(
            lr=self.lr, alpha=self.alpha, one_minus_alpha=1 - self.alpha, eps=self.eps, weight_decay=self.weight_decay
        )

    @staticmethod
    def step_F(scalars, static, state, step):
        grad, params = step.grad, step.params
        s = scalars
        g = _decayed(grad, params, s["weight_decay"])
        return RMSpropState(v=_map(lambda v, g: s["alpha"] * v + s["one_minus_alpha"] * g * g, state.v, g))  # (C13)

    @staticmethod
    def step_G(scalars, static, state, step):
        grad, params = step.grad, step.params
        s = scalars
        g = _decayed(grad, params, s["weight_decay"])
        return _map(lambda g, v: -s["lr"] * g / (jnp.sqrt(v) + s["eps"]), g, state.v)  # (C14)


# --------------------------------------------------------------------------- Lion


class LionState(NamedTuple):
    m: object
    c: object


class Lion(Optimizer):
    algo = "lion"
    layouts = {"m": PARAM, "c": PARAM}
    StateTree = LionState

    def initial_state(self, structure):
        return LionState(m=structure.zeros(), c=structure.zeros())

    def scalars(self):
        beta1, beta2 = self.betas
        return self.as_scalars(
            lr=self.lr,
            beta1=beta1,
            beta2=beta2,
            one_minus_beta1=1 - beta1,
            one_minus_beta2=1 - beta2,
            weight_decay=self.weight_decay,
        )

    @staticmethod
    def step_F(scalars, static, state, step):
        grad = step.grad
        s = scalars
        return LionState(
            m=_map(lambda m, g: s["beta2"] * m + s["one_minus_beta2"] * g, state.m, grad),  # (C16)
            c=_map(lambda m, g: s["beta1"] * m + s["one_minus_beta1"] * g, state.m, grad),  # (C15)
        )

    @staticmethod
    def step_G(scalars, static, state, step):
        params = step.params
        s = scalars
        if params is None:
            return _map(lambda c: -s["lr"] * jnp.sign(c), state.c)  # (C17), λ = 0
        return _map(lambda c, p: -s["lr"] * (jnp.sign(c) + s["weight_decay"] * p), state.c, params)  # (C17)


# --------------------------------------------------------------------------- constructors (the spec's signatures)


def sgd(lr, *, dtype="float64"):
    return SGD(dtype, **hyperparameters("sgd", lr=lr))


def momentum(lr, beta=0.9, *, dtype="float64"):
    return Momentum(dtype, **hyperparameters("momentum", lr=lr, beta=beta))


def nag(lr, beta=0.9, *, dtype="float64"):
    return NAG(dtype, **hyperparameters("nag", lr=lr, beta=beta))


def adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, dtype="float64"):
    hp = hyperparameters("adam", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return Adam(dtype, needs=_needs_params(hp["weight_decay"]), **hp)


def adamw(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *, dtype="float64"):
    hp = hyperparameters("adamw", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return AdamW(dtype, needs=_needs_params(hp["weight_decay"]), **hp)


def rmsprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, *, dtype="float64"):
    hp = hyperparameters("rmsprop", lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay)
    return RMSprop(dtype, needs=_needs_params(hp["weight_decay"]), **hp)


def lion(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, dtype="float64"):
    hp = hyperparameters("lion", lr=lr, betas=betas, weight_decay=weight_decay)
    return Lion(dtype, needs=_needs_params(hp["weight_decay"]), **hp)
