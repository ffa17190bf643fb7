"""Classical optimizers in torch, spec/classical.md (tags C1–C17), on parameter structures with
multi-tensor (``torch._foreach_*``) kernels: no Python loop over elements, one pass per operation over
all parameter tensors. Written from the spec page; the NumPy reference is not called."""

from __future__ import annotations

import math

import torch

from ...errors import StateError
from . import _fused
from ._core import COUNTER, PARAM, Optimizer, hyperparameters


def _needs_params(weight_decay: float) -> frozenset:
    return frozenset({"grad", "params"}) if weight_decay != 0 else frozenset({"grad"})


def _bias_correction(beta: float, step: int) -> float:
    if step < 1:
        raise StateError("step", "G is defined on S_t for t ≥ 1 (bias correction 1 − β^0 = 0); apply F first")
    return 1.0 - beta**step


def _torch_fused_takes(params: list[torch.Tensor], step) -> bool:
    """Whether torch's own fused kernels (torch.optim's ``fused=True``: ``torch._fused_sgd_``,
    ``_fused_adam_``, ``_fused_adamw_``) can run the in-place step: CPU or CUDA tensors, and the observed
    parameters, where the step reads them (weight decay), the very tensors it updates — the kernels decay
    the tensor they write."""
    return (
        bool(params)
        and params[0].device.type in ("cpu", "cuda")
        and (step.params is None or all(a is b for a, b in zip(step.params, params)))
    )


def _decayed(grad, params, weight_decay):
    """(C6, C12) coupled L2: g + λθ (the gradient itself without decay)."""
    return torch._foreach_add(grad, params, alpha=weight_decay) if weight_decay else grad


# --------------------------------------------------------------------------- SGD, momentum, NAG


class SGD(Optimizer):
    algo = "sgd"
    torch_fused = True  # advance_ runs torch's own fused kernel: `compile='auto'` keeps it
    layouts = {}

    def initial_state(self, structure, params):
        return {}

    def _F_(self, state, step):
        """(C1) S_t = S_{t-1}: SGD keeps no state, so F changes nothing."""

    def _G(self, state, step):
        return torch._foreach_mul(step.grad, -self.lr)  # (C2)

    def _apply_(self, state, step, params):
        torch._foreach_add_(params, step.grad, alpha=-self.lr)

    def advance_(self, state, step, params):
        if not _torch_fused_takes(params, step):
            return super().advance_(state, step, params)
        with torch.no_grad():  # (C2) in one kernel
            torch._fused_sgd_(params, step.grad, [], **_SGD_FLAGS, momentum=0.0, lr=self.lr, nesterov=False)


_SGD_FLAGS = dict(weight_decay=0.0, dampening=0.0, maximize=False, is_first_step=False)
"""torch's fused SGD as (C2–C5) state it: no decay or dampening; with m_0 = 0 the first step's
m_1 = β·0 + g_1 is torch's first-step buffer g_1, so no first-step case is needed."""


class Momentum(Optimizer):
    algo = "momentum"
    torch_fused = True  # advance_ runs torch's own fused kernel: `compile='auto'` keeps it
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

    def advance_(self, state, step, params):
        # torch's kernel keeps no buffer at momentum 0, where (C3) still sets m_t = g_t
        if self.beta == 0 or not _torch_fused_takes(params, step):
            return super().advance_(state, step, params)
        with torch.no_grad():  # (C3) with (C4), or with (C5) for nag, in one kernel
            torch._fused_sgd_(
                params,
                step.grad,
                state.stored["m"],
                **_SGD_FLAGS,
                momentum=self.beta,
                lr=self.lr,
                nesterov=self.algo == "nag",
            )


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
    torch_fused = True  # advance_ runs torch's own fused kernel: `compile='auto'` keeps it
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

    def advance_(self, state, step, params):
        if not _torch_fused_takes(params, step):
            return super().advance_(state, step, params)
        with torch.no_grad():  # (C6–C11) in one kernel: the same bias corrections, ε outside the root
            state.stored["step"] += 1
            count = torch.full((), float(state.stored["step"]), dtype=torch.float32, device=params[0].device)
            beta1, beta2 = self.betas
            (torch._fused_adamw_ if self.decoupled else torch._fused_adam_)(
                params,
                step.grad,
                state.stored["m"],
                state.stored["v"],
                [],
                [count] * len(params),
                lr=self.lr,
                beta1=beta1,
                beta2=beta2,
                weight_decay=self.weight_decay,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )

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


# --------------------------------------------------------------------------- the fast path (spec/backends.md#compiled)
# Each kernel is one tensor's whole step, F then θ += G, in place; `_fused` compiles it.


def _sgd(theta, g, s):
    (lr,) = s
    theta.copy_(theta - lr * g)  # (C2)


def _momentum(theta, g, m, s):
    lr, beta = s
    m.copy_(beta * m + g)  # (C3)
    theta.copy_(theta - lr * m)  # (C4)


def _nag(theta, g, m, s):
    lr, beta = s
    m.copy_(beta * m + g)  # (C3)
    theta.copy_(theta - lr * (g + beta * m))  # (C5)


def _adam_moments(g, m, v, beta1, beta2):
    m.copy_(beta1 * m + (1 - beta1) * g)  # (C7)
    v.copy_(beta2 * v + (1 - beta2) * g * g)  # (C8)


def _adam_direction(m, v, eps, bias1, root_bias2):
    return m / (v.sqrt() / root_bias2 + eps) / bias1  # (C9, C10) m̂/(√v̂ + ε)


def _adam(theta, g, m, v, s):
    lr, beta1, beta2, eps, _, bias1, root_bias2 = s
    _adam_moments(g, m, v, beta1, beta2)
    theta.copy_(theta - lr * _adam_direction(m, v, eps, bias1, root_bias2))


def _adam_l2(theta, g, m, v, s):
    weight_decay = s[4]
    _adam(theta, g + weight_decay * theta, m, v, s)  # (C6) coupled L2


def _adamw(theta, g, m, v, s):
    lr, beta1, beta2, eps, weight_decay, bias1, root_bias2 = s
    _adam_moments(g, m, v, beta1, beta2)
    theta.copy_(theta - lr * (weight_decay * theta + _adam_direction(m, v, eps, bias1, root_bias2)))  # (C11)


def _rmsprop(theta, g, v, s):
    lr, alpha, eps, _ = s
    v.copy_(alpha * v + (1 - alpha) * g * g)  # (C13)
    theta.copy_(theta - lr * (g / (v.sqrt() + eps)))  # (C14)


def _rmsprop_l2(theta, g, v, s):
    weight_decay = s[3]
    _rmsprop(theta, g + weight_decay * theta, v, s)  # (C12) coupled L2


def _lion_state(g, m, c, beta1, beta2):
    c.copy_(beta1 * m + (1 - beta1) * g)  # (C15)
    m.copy_(beta2 * m + (1 - beta2) * g)  # (C16)


def _lion(theta, g, m, c, s):
    lr, beta1, beta2, _ = s
    _lion_state(g, m, c, beta1, beta2)
    theta.copy_(theta - lr * torch.sign(c))  # (C17)


def _lion_decayed(theta, g, m, c, s):
    lr, beta1, beta2, weight_decay = s
    _lion_state(g, m, c, beta1, beta2)
    theta.copy_(theta - lr * (torch.sign(c) + weight_decay * theta))  # (C17)


def _adam_scalars(optimizer, state, step, params):
    """Advances t (C7–C8 count F applications), then the bias corrections 1 − β1^t and √(1 − β2^t)."""
    beta1, beta2 = optimizer.betas
    state.stored["step"] += 1
    t = state.stored["step"]
    return (optimizer.lr, beta1, beta2, optimizer.eps, optimizer.weight_decay, 1 - beta1**t, math.sqrt(1 - beta2**t))


KERNELS: dict[str, _fused.Kernel] = {
    "sgd": _fused.Kernel((), lambda o, *_: (o.lr,), _sgd),
    "momentum": _fused.Kernel(("m",), lambda o, *_: (o.lr, o.beta), _momentum),
    "nag": _fused.Kernel(("m",), lambda o, *_: (o.lr, o.beta), _nag),
    "adam": _fused.Kernel(("m", "v"), _adam_scalars, _adam, _adam_l2),
    "adamw": _fused.Kernel(("m", "v"), _adam_scalars, _adam, _adamw),
    "rmsprop": _fused.Kernel(("v",), lambda o, *_: (o.lr, o.alpha, o.eps, o.weight_decay), _rmsprop, _rmsprop_l2),
    "lion": _fused.Kernel(("m", "c"), lambda o, *_: (o.lr, *o.betas, o.weight_decay), _lion, _lion_decayed),
}
"""Algorithm id → its fast path (``_fused``)."""
