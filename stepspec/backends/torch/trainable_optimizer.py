"""The Trainable Optimizer in torch, spec/trainable_optimizer.md (tags TO1–TO9): the full pseudo-linear
TO, Diagonal TO and RankOne TO on parameter structures. Written from the spec page; the NumPy reference
is not called.

Diagonal and RankOne TO keep every optimizer variable (a, u, v, b) as one tensor per parameter and update
it with multi-tensor kernels. RankOne's global quantities vᵀx and uᵀr are per-tensor partial sums combined
by ``_core.reduce_sum`` in one round (uᵀr expanded so that it needs no second one, below).

Full TO's A is n × n over the concatenation of the parameters, a ``WHOLE`` tensor: its product A x mixes
entries of different tensors, so each step gathers x, g and b into flat (n,) vectors (``Structure.join``),
works on them, and splits the results back per parameter. It is meant for small n (``max_memory``); a
multi-device version would all-gather x instead of reducing partial sums.
"""

from __future__ import annotations

import abc
import math
import warnings

import torch

from ...errors import HyperparameterError, StepSizeWarning
from .. import _hyperparameters as checked
from . import _fused
from ._core import COUNTER, PARAM, WHOLE, Optimizer, State, Structure, as_tensors, hyperparameters, reduce_sum

_NEEDS = frozenset({"grad", "params"})


# --------------------------------------------------------------------------- shared small functions of tensors


def _projected(moved: list[torch.Tensor], center: list[torch.Tensor] | None, radius: float) -> list[torch.Tensor]:
    """(TO8) Π onto the ball ‖y − c‖ ≤ R: y inside (exactly), c + (y − c)·R/‖y − c‖ outside. ‖y − c‖² is
    one reduction round; the choice is made on the device (no host read)."""
    offsets = moved if center is None else torch._foreach_sub(moved, center)
    distance = torch.sqrt(reduce_sum([o.square().sum() for o in offsets])) if offsets else torch.zeros(())
    inside = distance <= radius
    shrink = radius / distance
    out = []
    for i, (y, offset) in enumerate(zip(moved, offsets)):
        boundary = offset * shrink if center is None else center[i] + offset * shrink
        out.append(torch.where(inside, y, boundary))
    return out


class _TrainableOptimizer(Optimizer):
    """What the three variants share: the schedules (TO1), the model step with its optional projection
    (TO7, TO8) and the step-size check (TO9)."""

    linear_rate: str  # the name of the linear part's rate: lr_A, lr_a, lr_uv

    def __init__(self, dtype, device, radius, center, **hp):
        super().__init__(dtype, device, needs=_NEEDS, **hp, radius=radius, center=center)
        self._center_parts: dict[Structure, list[torch.Tensor]] = {}

    def model_rate(self, t: int) -> float:
        return self.lr * self.lr_decay ** (t - 1)  # (TO1) α_t = α₀ ρ_α^{t−1}

    def variable_rate(self, initial: float, t: int) -> float:
        return initial * self.lr_opt_decay ** (t - 1)  # (TO1) η_t = η₀ ρ_η^{t−1}

    def rates(self, t: int) -> tuple[float, float]:
        """(η_t of the linear part, η^b_t)."""
        return self.variable_rate(getattr(self, self.linear_rate), t), self.variable_rate(self.lr_b, t)

    def check_center(self, structure: Structure) -> None:
        checked.check_center(self.center, structure.n)

    def center_parts(self, structure: Structure) -> list[torch.Tensor] | None:
        """The centre split like the parameters (None: the origin), cached per structure."""
        if self.center is None:
            return None
        if structure not in self._center_parts:
            self._center_parts[structure] = structure.split(self.center.to(structure.device))
        return self._center_parts[structure]

    def warn_if_expanding(self, contraction: float) -> None:
        """(TO9) c ≥ 2 amplifies the approximation error: warn (one fixed message) and take the step. Called
        before anything is modified, so a warning turned into an error leaves the state as it was."""
        if contraction >= 2.0:
            warnings.warn(
                f"{self.algo}: an optimizer-variable step with c ≥ 2 amplifies the approximation error "
                "(spec/trainable_optimizer.md#step-size-bound); lower the optimizer-variable rates",
                StepSizeWarning,
                stacklevel=4,  # warn_if_expanding ← _F_ ← F ← its caller
            )

    @abc.abstractmethod
    def approximation(self, state: State, x: list[torch.Tensor]) -> list[torch.Tensor]:
        """ĝ(x) under the optimizer variables of ``state``, one new tensor per parameter."""

    def projected_point(self, state: State, step, g_hat: list[torch.Tensor]) -> list[torch.Tensor]:
        """(TO8) x_{t+1} = Π_X(x_t − α_t ĝ_t)."""
        moved = torch._foreach_add(step.params, g_hat, alpha=-self.model_rate(state.stored["step"]))
        return _projected(moved, self.center_parts(state.structure), self.radius)

    def _G(self, state, step):
        g_hat = self.approximation(state, step.params)  # (TO7) ĝ_t from S_t
        if self.radius is not None:
            return torch._foreach_sub(self.projected_point(state, step, g_hat), step.params)  # Π_X(x − α ĝ) − x
        torch._foreach_mul_(g_hat, -self.model_rate(state.stored["step"]))  # (TO8) −α_t ĝ_t
        return g_hat

    def _apply_(self, state, step, params, g_hat=None):
        """θ ← Π_X(θ − α_t ĝ_t); ``g_hat`` when F has already formed it."""
        if g_hat is None:
            g_hat = self.approximation(state, step.params)
        if self.radius is not None:
            torch._foreach_copy_(params, self.projected_point(state, step, g_hat))
        else:
            torch._foreach_add_(params, g_hat, alpha=-self.model_rate(state.stored["step"]))


# --------------------------------------------------------------------------- full TO


class FullTO(_TrainableOptimizer):
    """A is an n × n ``WHOLE`` tensor over the concatenation; x, g and b are joined into flat vectors for
    its products (module docstring)."""

    algo = "trainable_optimizer"
    layouts = {"step": COUNTER, "A": WHOLE, "b": PARAM}
    linear_rate = "lr_A"

    def initial_state(self, structure, params):
        n = structure.n
        checked.check_full_state_size(n, self.max_memory)
        self.check_center(structure)
        A = torch.zeros((n, n), dtype=structure.dtype, device=structure.device)
        return {"step": 0, "A": A, "b": structure.zeros()}  # the paper's recommended A₀ = 0, b₀ = 0

    def approximation(self, state, x):
        structure = state.structure
        flat = state.stored["A"] @ structure.join(x) + structure.join(state.stored["b"])  # ĝ(x) = A x + b
        return structure.split(flat)

    def _F_(self, state, step):
        structure, t = state.structure, state.stored["step"] + 1
        eta_A, eta_b = self.rates(t)
        x = structure.join(step.params)
        self.warn_if_expanding(eta_A * float(x @ x) + eta_b if eta_A else eta_b)  # host read of ‖x‖²
        A = state.stored["A"]
        r = A @ x + structure.join(state.stored["b"]) - structure.join(step.grad)  # (TO2) r_t = A_t x_t + b_t − g_t
        if eta_A:
            A.addr_(r, x, alpha=-eta_A)  # (TO3) A_{t+1} = A_t − η^A_t r_t x_tᵀ
        residuals = [part.reshape(shape) for part, shape in zip(torch.split(r, structure.sizes), structure.shapes)]
        torch._foreach_add_(state.stored["b"], residuals, alpha=-eta_b)  # (TO4) b_{t+1} = b_t − η^b_t r_t
        state.stored["step"] = t


# --------------------------------------------------------------------------- Diagonal TO


def _largest_square(x: list[torch.Tensor]) -> float:
    """max_i x_i² over the structure (0 without entries), one host read: max_i fl(x_i²) = fl(max_i |x_i|)²
    (rounding is monotone), and |x| comes from one min-max pass per tensor, without an n-sized temporary."""
    extremes = [torch.aminmax(v) for v in x if v.numel()]
    if not extremes:
        return 0.0
    lowest, highest = (torch.stack(values) for values in zip(*extremes))
    return float(torch.maximum(-lowest.amin(), highest.amax()).square())


def _diagonal_residual(a, b, x, g):
    """(TO2) r = a ⊙ x + b − g, per tensor."""
    r = torch._foreach_mul(a, x)
    torch._foreach_add_(r, b)
    torch._foreach_sub_(r, g)
    return r


class DiagonalTO(_TrainableOptimizer):
    algo = "diagonal_to"
    layouts = {"step": COUNTER, "a": PARAM, "b": PARAM}
    linear_rate = "lr_a"

    def initial_state(self, structure, params):
        self.check_center(structure)
        return {"step": 0, "a": structure.zeros(), "b": structure.zeros()}

    def approximation(self, state, x):
        g_hat = torch._foreach_mul(state.stored["a"], x)  # ĝ(x) = a ⊙ x + b
        torch._foreach_add_(g_hat, state.stored["b"])
        return g_hat

    def _F_(self, state, step):
        t = state.stored["step"] + 1
        eta_a, eta_b = self.rates(t)
        x, a, b = step.params, state.stored["a"], state.stored["b"]
        # c_i = η^a x_i² + η^b: one host read of max_i x_i² (none when η^a = 0)
        self.warn_if_expanding(eta_a * _largest_square(x) + eta_b if eta_a else eta_b)
        r = _diagonal_residual(a, b, x, step.grad)
        if eta_a:
            torch._foreach_addcmul_(a, r, x, value=-eta_a)  # (TO5) a_{t+1} = a_t − η^a_t r_t ⊙ x_t
        torch._foreach_add_(b, r, alpha=-eta_b)  # (TO4)
        state.stored["step"] = t


# --------------------------------------------------------------------------- RankOne TO


def _rank_one_partials(u, v, b, x, g) -> torch.Tensor:
    """(vᵀx, uᵀu, uᵀb, uᵀg, xᵀx): per-tensor partial sums, stacked and summed by ``reduce_sum`` in one round."""
    rows = []
    for ui, vi, bi, xi, gi in zip(u, v, b, x, g):
        ui, vi, bi, xi, gi = (part.reshape(-1) for part in (ui, vi, bi, xi, gi))
        rows.append(torch.stack([vi @ xi, ui @ ui, ui @ bi, ui @ gi, xi @ xi]))
    return reduce_sum(rows)


class RankOneTO(_TrainableOptimizer):
    """One reduction round per step: r = u (vᵀx) + b − g gives uᵀr = (uᵀu)(vᵀx) + uᵀb − uᵀg, so vᵀx and
    uᵀr come from the same partial sums; and v_{t+1}ᵀx = vᵀx − η^{uv}(uᵀr)‖x‖², which the drop-in step
    (``advance_``) uses for the model step instead of a second round (G alone, from S_t, reduces
    v_{t+1}ᵀx afresh)."""

    algo = "rank_one_to"
    layouts = {"step": COUNTER, "u": PARAM, "v": PARAM, "b": PARAM}
    linear_rate = "lr_uv"

    def initial_state(self, structure, params):
        self.check_center(structure)
        # u = v = 0 is a stationary point of ℓ in (u, v): v starts at the unit vector 1/√n (spec: initialisation)
        entry = 1 / math.sqrt(structure.n) if structure.n else 0.0
        v = [torch.full(s, entry, dtype=structure.dtype, device=structure.device) for s in structure.shapes]
        return {"step": 0, "u": structure.zeros(), "v": v, "b": structure.zeros()}

    def approximation(self, state, x, vx=None):
        """ĝ(x) = u (vᵀx) + b; ``vx`` when it is already known."""
        u, v, b = state.stored["u"], state.stored["v"], state.stored["b"]
        if vx is None:
            vx = reduce_sum([torch.dot(vi.reshape(-1), xi.reshape(-1)) for vi, xi in zip(v, x)]) if x else None
        if vx is None:
            return []
        g_hat = torch._foreach_mul(u, vx)
        torch._foreach_add_(g_hat, b)
        return g_hat

    def _F_(self, state, step) -> torch.Tensor | None:
        """F in place; returns v_{t+1}ᵀx_t (a 0-d tensor) for the drop-in step, None without tensors."""
        t = state.stored["step"] + 1
        eta_uv, eta_b = self.rates(t)
        self.warn_if_expanding(eta_b)  # ℓ is quartic in (u, v): only the b-part has the bound
        u, v, b, x, g = state.stored["u"], state.stored["v"], state.stored["b"], step.params, step.grad
        state.stored["step"] = t
        if not x:
            return None
        vx, uu, ub, ug, xx = _rank_one_partials(u, v, b, x, g).unbind()
        r = torch._foreach_mul(u, vx)  # (TO2) r_t = u_t (v_tᵀx_t) + b_t − g_t, from the old u, v, b
        torch._foreach_add_(r, b)
        torch._foreach_sub_(r, g)
        ur = uu * vx + ub - ug  # u_tᵀr_t
        if eta_uv:
            u_factor, v_factor = -eta_uv * vx, -eta_uv * ur  # 0-d tensors: no host read, no n-sized temporary
            for ui, vi, ri, xi in zip(u, v, r, x):
                ui.addcmul_(ri, u_factor)  # (TO6) u_{t+1} = u_t − η r_t (v_tᵀx_t)
                vi.addcmul_(xi, v_factor)  # (TO6) v_{t+1} = v_t − η x_t (u_tᵀr_t)
            vx = vx - eta_uv * ur * xx
        torch._foreach_add_(b, r, alpha=-eta_b)  # (TO4)
        return vx

    def advance_(self, state, step, params):
        with torch.no_grad():
            vx = self._F_(state, step)
            self._apply_(state, step, params, None if vx is None else self.approximation(state, step.params, vx))


# --------------------------------------------------------------------------- constructors (the spec's signatures)


def _projection(radius, center, dtype, device) -> dict:
    """The ball of (TO8), checked (``_hyperparameters.projection``): a centre given as a tensor, an array, or a
    list of tensors shaped like the parameters is kept as one vector tensor."""

    def flat_center(center):
        parts, structure = as_tensors("center", center, HyperparameterError, dtype, device)
        return structure.join(parts)

    return checked.projection(radius, center, flat_center)


def trainable_optimizer(
    lr,
    lr_A,
    lr_b=None,
    lr_decay=1.0,
    lr_opt_decay=1.0,
    radius=None,
    center=None,
    max_memory=2**30,
    *,
    dtype=torch.float64,
    device="cpu",
):
    """Pseudo-linear TO (paper 002, Algorithm 1): n² + n optimizer variables; ``lr_b`` defaults to ``lr_A``."""
    hp = hyperparameters(
        "trainable_optimizer",
        lr=lr,
        lr_A=lr_A,
        lr_b=lr_A if lr_b is None else lr_b,
        lr_decay=lr_decay,
        lr_opt_decay=lr_opt_decay,
        max_memory=max_memory,
    )
    return FullTO(dtype, device, **_projection(radius, center, dtype, device), **hp)


def diagonal_to(
    lr, lr_a, lr_b=None, lr_decay=1.0, lr_opt_decay=1.0, radius=None, center=None, *, dtype=torch.float64, device="cpu"
):
    """Diagonal TO (paper 002, Algorithm 2): A = diag(a); ``lr_b`` defaults to ``lr_a``."""
    hp = hyperparameters(
        "diagonal_to",
        lr=lr,
        lr_a=lr_a,
        lr_b=lr_a if lr_b is None else lr_b,
        lr_decay=lr_decay,
        lr_opt_decay=lr_opt_decay,
    )
    return DiagonalTO(dtype, device, **_projection(radius, center, dtype, device), **hp)


def rank_one_to(
    lr, lr_uv, lr_b=None, lr_decay=1.0, lr_opt_decay=1.0, radius=None, center=None, *, dtype=torch.float64, device="cpu"
):
    """RankOne TO (paper 002, Algorithm 3): A = u vᵀ; ``lr_b`` defaults to ``lr_uv``."""
    hp = hyperparameters(
        "rank_one_to",
        lr=lr,
        lr_uv=lr_uv,
        lr_b=lr_uv if lr_b is None else lr_b,
        lr_decay=lr_decay,
        lr_opt_decay=lr_opt_decay,
    )
    return RankOneTO(dtype, device, **_projection(radius, center, dtype, device), **hp)


# --------------------------------------------------------------------------- the fast path (spec/backends.md#compiled)
# One tensor's whole step, F then θ += G, in place; `_fused` compiles it. x is the observation's x_t (the
# drop-in optimizers observe their own parameters: then it is θ itself, read before θ is written).


def _diagonal_step(theta, g, a, b, x, s):
    lr, eta_a, eta_b = s
    r = a * x + b - g  # (TO2)
    a.copy_(a - eta_a * r * x)  # (TO5)
    b.copy_(b - eta_b * r)  # (TO4)
    theta.copy_(theta - lr * (a * x + b))  # (TO7, TO8) θ − α_t ĝ(x_t) under a_{t+1}, b_{t+1}


def _diagonal_scalars(optimizer, state, step, params):
    """t advanced, and the step-size check (TO9) as the eager step makes it."""
    t = state.stored["step"] + 1
    eta_a, eta_b = optimizer.rates(t)
    optimizer.warn_if_expanding(eta_a * _largest_square(step.params) + eta_b if eta_a else eta_b)
    state.stored["step"] = t
    return optimizer.model_rate(t), eta_a, eta_b


def _rank_one_sums(u, v, b, x, g):
    """One tensor's (vᵀx, uᵀu, uᵀb, uᵀg, xᵀx); compiled, loops that read each input once."""
    return torch.stack([(v * x).sum(), (u * u).sum(), (u * b).sum(), (u * g).sum(), (x * x).sum()])


def _rank_one_step(theta, g, u, v, b, x, s):
    lr, eta_uv, eta_b, vx, ur, next_vx = s
    r = u * vx + b - g  # (TO2) from the old u, v, b
    u.copy_(u - eta_uv * vx * r)  # (TO6)
    v.copy_(v - eta_uv * ur * x)  # (TO6)
    b.copy_(b - eta_b * r)  # (TO4)
    theta.copy_(theta - lr * (u * next_vx + b))  # (TO7, TO8) with v_{t+1}ᵀx_t


def _rank_one_scalars(optimizer, state, step, params, compile):
    """t advanced; the round (vᵀx, uᵀu, uᵀb, uᵀg, xᵀx) and, from it on the device, uᵀr and v_{t+1}ᵀx
    (``RankOneTO``)."""
    t = state.stored["step"] + 1
    eta_uv, eta_b = optimizer.rates(t)
    optimizer.warn_if_expanding(eta_b)
    state.stored["step"] = t
    if not step.params:
        return optimizer.model_rate(t), eta_uv, eta_b, 0.0, 0.0, 0.0
    columns = [state.stored["u"], state.stored["v"], state.stored["b"], step.params, step.grad]
    vx, uu, ub, ug, xx = reduce_sum(_fused.partial_sums(_rank_one_sums, columns, compile)).unbind()
    ur = uu * vx + ub - ug
    return optimizer.model_rate(t), eta_uv, eta_b, vx, ur, vx - eta_uv * ur * xx


def _without_projection(optimizer) -> bool:
    return optimizer.radius is None  # the projection (TO8) needs a second round, ‖y − c‖²: eager


KERNELS: dict[str, _fused.Kernel] = {
    "diagonal_to": _fused.Kernel(
        ("a", "b"), _diagonal_scalars, _diagonal_step, applies=_without_projection, observed=("params",)
    ),
    "rank_one_to": _fused.Kernel(
        ("u", "v", "b"),
        _rank_one_scalars,
        _rank_one_step,
        reduces=True,
        applies=_without_projection,
        observed=("params",),
    ),
}
"""Algorithm id → its fast path (``_fused``)."""
