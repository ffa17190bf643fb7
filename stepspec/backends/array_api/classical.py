"""Classical optimizers on the array API, spec/classical.md (tags C1–C17). Each algorithm is its elementwise
passes, written once as functions of arrays and scalars (``_pass_*``, built for a namespace by
``Namespace.fused``: one cupy kernel each, or the operators as written elsewhere): F's state update, G's
update, and the step's F then θ + G in one pass. Written from the spec page; the reference is not called."""

from __future__ import annotations

import math

from ...errors import StateError
from ._core import COUNTER, PARAM, Optimizer, hyperparameters, over_leaves


def _needs_params(weight_decay: float) -> frozenset:
    return frozenset({"grad", "params"}) if weight_decay != 0 else frozenset({"grad"})


def _check_step(step: int) -> None:
    if step < 1:
        raise StateError("step", "G is defined on S_t for t ≥ 1 (bias correction 1 − β^0 = 0); apply F first")


# --------------------------------------------------------------------------- the elementwise passes


def _pass_sgd(xp):
    return lambda theta, g, lr: theta - lr * g  # (C2)


def _pass_scaled(xp):
    return lambda x, scale: scale * x


def _pass_momentum_state(xp):
    return lambda m, g, beta: beta * m + g  # (C3)


def _pass_momentum_step(xp):
    def step(theta, m, g, lr, beta):
        m = beta * m + g  # (C3)
        return m, theta - lr * m  # (C4)

    return step


def _pass_nag_update(xp):
    return lambda m, g, lr, beta: -lr * (g + beta * m)  # (C5)


def _pass_nag_step(xp):
    def step(theta, m, g, lr, beta):
        m = beta * m + g  # (C3)
        return m, theta - lr * (g + beta * m)  # (C5)

    return step


def _pass_decayed(xp):
    return lambda g, theta, weight_decay: g + weight_decay * theta  # (C6, C12) coupled L2


def _pass_adam_state(xp):
    def state(m, v, g, beta1, beta2):
        return beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * (g * g)  # (C7, C8)

    return state


def _pass_adam_update(xp):
    # (C9, C10) −lr·m̂/(√v̂ + ε), the bias corrections as scalars
    return lambda m, v, lr, eps, bias1, root_bias2: -lr * (m / (xp.sqrt(v) / root_bias2 + eps) / bias1)


def _pass_adamw_update(xp):
    def update(m, v, theta, lr, eps, weight_decay, bias1, root_bias2):
        return -lr * (weight_decay * theta + m / (xp.sqrt(v) / root_bias2 + eps) / bias1)  # (C11)

    return update


def _pass_adam_step(xp):
    def step(theta, m, v, g, lr, beta1, beta2, eps, l2, weight_decay, bias1, root_bias2):
        g = g + l2 * theta  # (C6) coupled L2 (Adam), l2 = 0 for AdamW
        m = beta1 * m + (1 - beta1) * g  # (C7)
        v = beta2 * v + (1 - beta2) * (g * g)  # (C8)
        return m, v, theta - lr * (weight_decay * theta + m / (xp.sqrt(v) / root_bias2 + eps) / bias1)  # (C9–C11)

    return step


def _pass_rmsprop_state(xp):
    return lambda v, g, alpha: alpha * v + (1 - alpha) * (g * g)  # (C13)


def _pass_rmsprop_update(xp):
    return lambda v, g, lr, eps: -lr * (g / (xp.sqrt(v) + eps))  # (C14)


def _pass_rmsprop_step(xp):
    def step(theta, v, g, lr, alpha, eps, weight_decay):
        g = g + weight_decay * theta  # (C12)
        v = alpha * v + (1 - alpha) * (g * g)  # (C13)
        return v, theta - lr * (g / (xp.sqrt(v) + eps))  # (C14)

    return step


def _pass_lion_state(xp):
    def state(m, g, beta1, beta2):
        return beta2 * m + (1 - beta2) * g, beta1 * m + (1 - beta1) * g  # (C16) m_t, (C15) c_t

    return state


def _pass_lion_update(xp):
    return lambda c, lr: -lr * xp.sign(c)  # (C17), λ = 0


def _pass_lion_decayed_update(xp):
    return lambda c, theta, lr, weight_decay: -lr * (xp.sign(c) + weight_decay * theta)  # (C17)


def _pass_lion_step(xp):
    def step(theta, m, g, lr, beta1, beta2, weight_decay):
        c = beta1 * m + (1 - beta1) * g  # (C15)
        return beta2 * m + (1 - beta2) * g, c, theta - lr * (xp.sign(c) + weight_decay * theta)  # (C16, C17)

    return step


# --------------------------------------------------------------------------- optimizers


class SGD(Optimizer):
    algo = "sgd"
    layouts = {}

    def initial_state(self, structure, params):
        return {}

    def _F(self, state, step):
        return {}  # (C1) S_t = S_{t-1}

    def _G(self, state, step):
        return over_leaves(self.ns.fused(_pass_scaled), [step.grad], -self.lr)  # (C2)

    def _step(self, state, step, params):
        return {}, over_leaves(self.ns.fused(_pass_sgd), [params, step.grad], self.lr)


class Momentum(Optimizer):
    algo = "momentum"
    layouts = {"m": PARAM}

    def initial_state(self, structure, params):
        return {"m": structure.zeros()}

    def _F(self, state, step):
        return {"m": over_leaves(self.ns.fused(_pass_momentum_state), [state.stored["m"], step.grad], self.beta)}

    def _G(self, state, step):
        return over_leaves(self.ns.fused(_pass_scaled), [state.stored["m"]], -self.lr)  # (C4)

    _pass_step = staticmethod(_pass_momentum_step)

    def _step(self, state, step, params):
        m, theta = over_leaves(
            self.ns.fused(self._pass_step), [params, state.stored["m"], step.grad], self.lr, self.beta, outputs=2
        )
        return {"m": m}, theta


class NAG(Momentum):
    algo = "nag"
    _pass_step = staticmethod(_pass_nag_step)

    def _G(self, state, step):
        return over_leaves(self.ns.fused(_pass_nag_update), [state.stored["m"], step.grad], self.lr, self.beta)


class Adam(Optimizer):
    algo = "adam"
    layouts = {"step": COUNTER, "m": PARAM, "v": PARAM}
    decoupled = False

    def initial_state(self, structure, params):
        return {"step": 0, "m": structure.zeros(), "v": structure.zeros()}

    def _gradient(self, step):
        """(C6) g + λθ for Adam with λ ≠ 0 (the spec adds it only then); the gradient itself otherwise."""
        if self.decoupled or not self.weight_decay:
            return step.grad
        return over_leaves(self.ns.fused(_pass_decayed), [step.grad, step.params], self.weight_decay)

    def _F(self, state, step):
        m, v = over_leaves(
            self.ns.fused(_pass_adam_state),
            [state.stored["m"], state.stored["v"], self._gradient(step)],
            *self.betas,
            outputs=2,
        )
        return {"step": state.stored["step"] + 1, "m": m, "v": v}

    def check_G(self, state):
        _check_step(state.stored["step"])

    def _corrections(self, t: int) -> tuple[float, float]:
        """1 − β1^t and √(1 − β2^t) (C9, C10), in float64 on the host."""
        beta1, beta2 = self.betas
        return 1.0 - beta1**t, math.sqrt(1.0 - beta2**t)

    def _decoupled_decay(self) -> float:
        return self.weight_decay if self.decoupled else 0.0

    def _G(self, state, step):
        m, v, corrections = state.stored["m"], state.stored["v"], self._corrections(state.stored["step"])
        decay = self._decoupled_decay()
        if decay:  # θ enters only with AdamW's λ ≠ 0 (a non-finite θ·0 would be NaN)
            return over_leaves(
                self.ns.fused(_pass_adamw_update), [m, v, step.params], self.lr, self.eps, decay, *corrections
            )
        return over_leaves(self.ns.fused(_pass_adam_update), [m, v], self.lr, self.eps, *corrections)

    def _step(self, state, step, params):
        # one pass for every λ: ``step`` has checked θ finite, so λθ with λ = 0 adds exactly 0
        t = state.stored["step"] + 1
        l2 = 0.0 if self.decoupled else self.weight_decay
        m, v, theta = over_leaves(
            self.ns.fused(_pass_adam_step),
            [params, state.stored["m"], state.stored["v"], step.grad],
            self.lr,
            *self.betas,
            self.eps,
            l2,
            self._decoupled_decay(),
            *self._corrections(t),
            outputs=3,
        )
        return {"step": t, "m": m, "v": v}, theta


class AdamW(Adam):
    algo = "adamw"
    decoupled = True


class RMSprop(Optimizer):
    algo = "rmsprop"
    layouts = {"v": PARAM}

    def initial_state(self, structure, params):
        return {"v": structure.zeros()}

    def _gradient(self, step):
        if not self.weight_decay:
            return step.grad
        return over_leaves(self.ns.fused(_pass_decayed), [step.grad, step.params], self.weight_decay)

    def _F(self, state, step):
        return {
            "v": over_leaves(self.ns.fused(_pass_rmsprop_state), [state.stored["v"], self._gradient(step)], self.alpha)
        }

    def _G(self, state, step):
        return over_leaves(
            self.ns.fused(_pass_rmsprop_update), [state.stored["v"], self._gradient(step)], self.lr, self.eps
        )

    def _step(self, state, step, params):
        v, theta = over_leaves(
            self.ns.fused(_pass_rmsprop_step),
            [params, state.stored["v"], step.grad],
            self.lr,
            self.alpha,
            self.eps,
            self.weight_decay,
            outputs=2,
        )
        return {"v": v}, theta


class Lion(Optimizer):
    algo = "lion"
    layouts = {"m": PARAM, "c": PARAM}

    def initial_state(self, structure, params):
        return {"m": structure.zeros(), "c": structure.zeros()}

    def _F(self, state, step):
        m, c = over_leaves(self.ns.fused(_pass_lion_state), [state.stored["m"], step.grad], *self.betas, outputs=2)
        return {"m": m, "c": c}

    def _G(self, state, step):
        c = state.stored["c"]
        if self.weight_decay:  # θ enters only with λ ≠ 0
            return over_leaves(self.ns.fused(_pass_lion_decayed_update), [c, step.params], self.lr, self.weight_decay)
        return over_leaves(self.ns.fused(_pass_lion_update), [c], self.lr)

    def _step(self, state, step, params):
        m, c, theta = over_leaves(
            self.ns.fused(_pass_lion_step),
            [params, state.stored["m"], step.grad],
            self.lr,
            *self.betas,
            self.weight_decay,
            outputs=3,
        )
        return {"m": m, "c": c}, theta


# --------------------------------------------------------------------------- constructors (the spec's signatures)


def sgd(lr, *, ns):
    return SGD(ns, **hyperparameters("sgd", lr=lr))


def momentum(lr, beta=0.9, *, ns):
    return Momentum(ns, **hyperparameters("momentum", lr=lr, beta=beta))


def nag(lr, beta=0.9, *, ns):
    return NAG(ns, **hyperparameters("nag", lr=lr, beta=beta))


def adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, ns):
    hp = hyperparameters("adam", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return Adam(ns, needs=_needs_params(hp["weight_decay"]), **hp)


def adamw(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *, ns):
    hp = hyperparameters("adamw", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return AdamW(ns, needs=_needs_params(hp["weight_decay"]), **hp)


def rmsprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, *, ns):
    hp = hyperparameters("rmsprop", lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay)
    return RMSprop(ns, needs=_needs_params(hp["weight_decay"]), **hp)


def lion(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, ns):
    hp = hyperparameters("lion", lr=lr, betas=betas, weight_decay=weight_decay)
    return Lion(ns, needs=_needs_params(hp["weight_decay"]), **hp)
