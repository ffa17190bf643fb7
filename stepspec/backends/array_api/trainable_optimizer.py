"""The Trainable Optimizer on the array API, spec/trainable_optimizer.md (tags TO1–TO9): the full pseudo-linear
TO, Diagonal TO and RankOne TO on parameter structures. Written from the spec page and the torch design; the
NumPy reference is not called.

Diagonal and RankOne TO keep a, u, v and b as one array per parameter. A step without a ball is one
elementwise pass per parameter (``_pass_*_step``: the optimizer variables' update and θ − α_t ĝ_t together);
a ball (TO8) makes that pass write x − α_t ĝ_t and its offset from the centre instead, adds the round
‖y − c‖², and a second pass per parameter chooses between the point and its projection on the device
(``xp.where``: no host read).

RankOne's global quantities take one ``reduce_sum`` round of per-parameter partial sums
(vᵀx, uᵀu, uᵀb, uᵀg, xᵀx): with r = u (vᵀx) + b − g, uᵀr = (uᵀu)(vᵀx) + uᵀb − uᵀg, and the step's model
update needs v_{t+1}ᵀx = vᵀx − η^{uv}(uᵀr)‖x‖², all 0-d device arrays formed from the same sums. G on its own,
from S_t, reduces v_{t+1}ᵀx afresh (one round).

Full TO's A is n × n over the concatenation of the parameters (``WHOLE``): A x mixes entries of different
parameters, so this variant, and only this one, joins x, g and b into flat (n,) vectors, takes the two
matrix-vector products A_t x and A_{t+1} x (TO2, TO7) on the device, and splits the results back per
parameter. A's rank-one update is one elementwise pass over the n × n array, broadcasting r as a column
against x as a row (no separate outer product); with η^A_t = 0 it is skipped and A shared. It is for small n
(``max_memory``).

Host reads (each a device synchronisation), beyond the core's finite checks of the observation:
- the step-size check (TO9), before any work: ‖x‖² for full TO and max_i x_i² for Diagonal TO, one scalar
  each, and only when the linear part's rate η_t is non-zero; RankOne's check is on η^b alone, host
  arithmetic;
- nothing else: the rates (TO1) are host floats, vᵀx, uᵀr and the ball's choice stay on the device.

Precision: every array is in the working dtype; the rates are float64 host scalars rounded where they meet
an array. max_i x_i² is squared in the working dtype, fl(max_i |x_i|)² = max_i fl(x_i²) (rounding is
monotone), so the warning fires where the reference's in the same precision does. ``max_memory`` counts
8 bytes per entry in every precision, as the spec's formula does.
"""

from __future__ import annotations

import abc
import math
import warnings

from ...errors import HyperparameterError, StepSizeWarning
from .. import _hyperparameters as checked
from ._core import COUNTER, PARAM, WHOLE, Optimizer, Structure, as_arrays, hyperparameters, over_leaves

_NEEDS = frozenset({"grad", "params"})

# --------------------------------------------------------------------------- the elementwise passes
# Plain functions of arrays (``_diagonal_variables``, ``_rank_one_variables``, ``_moved``, ``_ball_point``) are
# the equations, written once; the passes compose them, so that each compiles into one kernel under cupy.


def _moved(x, g_hat, lr, center):
    """(TO8) y = x − α_t ĝ_t and its offset from the ball's centre."""
    y = x - lr * g_hat
    return y, y - center


def _ball_point(xp, moved, offset, center, distance, radius):
    """(TO8) Π onto the ball: y inside (exactly), c + (y − c)·R/‖y − c‖ outside, chosen on the device (R/‖y − c‖
    is not selected inside, where the distance may be 0)."""
    return xp.where(distance <= radius, moved, center + offset * (radius / distance))


def _pass_ball_update(xp):
    def update(moved, offset, x, center, distance, radius):
        return _ball_point(xp, moved, offset, center, distance, radius) - x

    return update


def _pass_ball_step(xp):
    def step(theta, moved, offset, x, center, distance, radius):
        return theta + (_ball_point(xp, moved, offset, center, distance, radius) - x)  # θ + G

    return step


def _pass_full_residual(xp):
    def residual(Ax, b, g, eta_b):
        r = Ax + b - g  # (TO2) r_t = A_t x_t + b_t − g_t
        return r, b - eta_b * r  # (TO4) b_{t+1} = b_t − η^b_t r_t

    return residual


def _pass_full_linear(xp):
    return lambda A, r_column, x_row, eta_A: A - eta_A * r_column * x_row  # (TO3) A_t − η^A_t r_t x_tᵀ


def _pass_full_update(xp):
    return lambda Ax, b, lr: -lr * (Ax + b)  # (TO7, TO8) −α_t ĝ_t, ĝ_t = A x + b


def _pass_full_step(xp):
    return lambda theta, Ax, b, lr: theta - lr * (Ax + b)


def _pass_full_moved(xp):
    return lambda x, Ax, b, center, lr: _moved(x, Ax + b, lr, center)


def _diagonal_variables(a, b, x, g, eta_a, eta_b):
    r = a * x + b - g  # (TO2) r_t = a_t ⊙ x_t + b_t − g_t
    return a - eta_a * r * x, b - eta_b * r  # (TO5) a_t − η^a_t r_t ⊙ x_t, (TO4)


def _pass_diagonal_variables(xp):
    return _diagonal_variables


def _pass_diagonal_update(xp):
    return lambda a, b, x, lr: -lr * (a * x + b)  # (TO7, TO8) −α_t ĝ_t, ĝ_t = a ⊙ x + b


def _pass_diagonal_moved_from_state(xp):
    return lambda a, b, x, center, lr: _moved(x, a * x + b, lr, center)


def _pass_diagonal_step(xp):
    def step(theta, a, b, x, g, lr, eta_a, eta_b):
        a, b = _diagonal_variables(a, b, x, g, eta_a, eta_b)
        return a, b, theta - lr * (a * x + b)

    return step


def _pass_diagonal_moved(xp):
    def step(a, b, x, g, center, lr, eta_a, eta_b):
        a, b = _diagonal_variables(a, b, x, g, eta_a, eta_b)
        return (a, b, *_moved(x, a * x + b, lr, center))

    return step


def _rank_one_variables(u, v, b, x, g, vx, ur, eta_uv, eta_b):
    r = u * vx + b - g  # (TO2) r_t = u_t (v_tᵀx_t) + b_t − g_t, from the old u, v, b
    # (TO6) u_t − η r_t (v_tᵀx_t) = u_t − η (∇_A ℓ) v_t, v_t − η x_t (u_tᵀr_t) = v_t − η (∇_A ℓ)ᵀ u_t; (TO4)
    return u - eta_uv * r * vx, v - eta_uv * ur * x, b - eta_b * r


def _pass_rank_one_variables(xp):
    return _rank_one_variables


def _pass_rank_one_update(xp):
    return lambda u, b, vx, lr: -lr * (u * vx + b)  # (TO7, TO8) −α_t ĝ_t, ĝ_t = u (vᵀx) + b


def _pass_rank_one_moved_from_state(xp):
    return lambda u, b, x, center, vx, lr: _moved(x, u * vx + b, lr, center)


def _pass_rank_one_step(xp):
    def step(theta, u, v, b, x, g, vx, ur, next_vx, lr, eta_uv, eta_b):
        u, v, b = _rank_one_variables(u, v, b, x, g, vx, ur, eta_uv, eta_b)
        return u, v, b, theta - lr * (u * next_vx + b)  # ĝ_t with v_{t+1}ᵀx_t

    return step


def _pass_rank_one_moved(xp):
    def step(u, v, b, x, g, center, vx, ur, next_vx, lr, eta_uv, eta_b):
        u, v, b = _rank_one_variables(u, v, b, x, g, vx, ur, eta_uv, eta_b)
        return (u, v, b, *_moved(x, u * next_vx + b, lr, center))

    return step


# --------------------------------------------------------------------------- what the variants share


class _TrainableOptimizer(Optimizer):
    """The schedules (TO1), the ball (TO8) and the step-size check (TO9). Subclasses implement ``_F``,
    ``_update`` (G without a ball), ``_moved`` (x − α_t ĝ_t and its offset, from S_t), ``_step`` and
    ``contraction`` (the c of TO9)."""

    linear_rate: str  # the name of the linear part's rate: lr_A, lr_a, lr_uv

    def __init__(self, ns, radius, center, **hp):
        super().__init__(ns, needs=_NEEDS, **hp, radius=radius, center=center)
        self._center_parts: dict[Structure, list] = {}

    def model_rate(self, t: int) -> float:
        return self.lr * self.lr_decay ** (t - 1)  # (TO1) α_t = α₀ ρ_α^{t−1}

    def rates(self, t: int) -> tuple[float, float]:
        """(TO1) η_t = η₀ ρ_η^{t−1} of the linear part, and η^b_t."""
        decay = self.lr_opt_decay ** (t - 1)
        return getattr(self, self.linear_rate) * decay, self.lr_b * decay

    def check_center(self, structure: Structure) -> None:
        checked.check_center(self.center, structure.n)

    def center_parts(self, structure: Structure) -> list:
        """The centre split like the parameters, or 0.0 per parameter for the origin (a scalar in the passes)."""
        if self.center is None:
            return [0.0] * len(structure.shapes)
        if structure not in self._center_parts:
            self._center_parts[structure] = structure.split(self.center)
        return self._center_parts[structure]

    @abc.abstractmethod
    def contraction(self, step, eta: float, eta_b: float) -> float:
        """(TO9) c of this step, read on the host."""

    def check_F(self, state, step):
        """(TO9) c ≥ 2 amplifies the approximation error: warn (one fixed message, so Python's default filter
        shows it once per run) and take the step. Checked before any work, so a warning turned into an
        error leaves everything as it was."""
        with self.ns.errors_ignored():
            c = self.contraction(step, *self.rates(state.stored["step"] + 1))
        if c >= 2.0:
            warnings.warn(
                f"{self.algo}: an optimizer-variable step with c ≥ 2 amplifies the approximation error "
                "(spec/trainable_optimizer.md#step-size-bound); lower the optimizer-variable rates",
                StepSizeWarning,
                stacklevel=3,  # check_F ← F or step ← its caller
            )

    def _ball(self, pass_, leading: list, moved: list, offsets: list, x: list, structure: Structure) -> list:
        """(TO8) Π_X per parameter after the round ‖y − c‖²: ``pass_`` is ``_pass_ball_update`` (G, no
        ``leading``) or ``_pass_ball_step`` (θ + G, ``leading`` = [θ])."""
        ns = self.ns
        distance = ns.xp.sqrt(ns.inner(offsets, offsets))
        arrays = [*leading, moved, offsets, x, self.center_parts(structure)]
        return over_leaves(ns.fused(pass_), arrays, distance, self.radius)

    def _G(self, state, step):
        lr = self.model_rate(state.stored["step"])  # α_t of S_t
        if self.radius is None:
            return self._update(state, step, lr)
        moved, offsets = self._moved(state, step, lr)
        return self._ball(_pass_ball_update, [], moved, offsets, step.params, state.structure)

    @abc.abstractmethod
    def _update(self, state, step, lr: float) -> list:
        """−α_t ĝ_t per parameter, from S_t."""

    @abc.abstractmethod
    def _moved(self, state, step, lr: float) -> tuple[list, list]:
        """(x − α_t ĝ_t, its offset from the centre) per parameter, from S_t."""


# --------------------------------------------------------------------------- full TO


class FullTO(_TrainableOptimizer):
    """A is an n × n ``WHOLE`` array over the concatenation; x, g and b are joined into flat vectors for its
    products (module docstring)."""

    algo = "trainable_optimizer"
    layouts = {"step": COUNTER, "A": WHOLE, "b": PARAM}
    linear_rate = "lr_A"

    def initial_state(self, structure, params):
        n = structure.n
        checked.check_full_state_size(n, self.max_memory)
        self.check_center(structure)
        return {"step": 0, "A": self.ns.zeros((n, n)), "b": structure.zeros()}  # the paper's A₀ = 0, b₀ = 0

    def contraction(self, step, eta, eta_b):
        if not eta:
            return eta_b
        return eta * float(self.ns.inner(step.params, step.params)) + eta_b  # c = η^A‖x‖² + η^b: a host read

    def _train(self, state, step):
        """F's fields, and x_t as one flat vector."""
        structure, ns, t = state.structure, self.ns, state.stored["step"] + 1
        eta_A, eta_b = self.rates(t)
        x, A = structure.join(step.params), state.stored["A"]
        b, g = structure.join(state.stored["b"]), structure.join(step.grad)
        r, b = ns.fused(_pass_full_residual)(A @ x, b, g, eta_b)  # (TO2, TO4)
        if eta_A:  # (TO3), one pass over A: r as a column, x as a row
            column, row = ns.xp.reshape(r, (-1, 1)), ns.xp.reshape(x, (1, -1))
            A = ns.fused(_pass_full_linear)(A, column, row, eta_A)
        return {"step": t, "A": A, "b": structure.split(b)}, x

    def _F(self, state, step):
        return self._train(state, step)[0]

    def _products(self, stored, structure, x) -> list:
        """A x per parameter, x flat: with S_t's A, (TO7)'s A_{t+1} x_t."""
        return structure.split(stored["A"] @ x)

    def _update(self, state, step, lr):
        Ax = self._products(state.stored, state.structure, state.structure.join(step.params))
        return over_leaves(self.ns.fused(_pass_full_update), [Ax, state.stored["b"]], lr)

    def _moved(self, state, step, lr):
        structure = state.structure
        Ax = self._products(state.stored, structure, structure.join(step.params))
        arrays = [step.params, Ax, state.stored["b"], self.center_parts(structure)]
        return over_leaves(self.ns.fused(_pass_full_moved), arrays, lr, outputs=2)

    def _step(self, state, step, params):
        stored, x = self._train(state, step)
        structure, lr = state.structure, self.model_rate(stored["step"])
        Ax = self._products(stored, structure, x)
        if self.radius is None:
            return stored, over_leaves(self.ns.fused(_pass_full_step), [params, Ax, stored["b"]], lr)
        arrays = [step.params, Ax, stored["b"], self.center_parts(structure)]
        moved, offsets = over_leaves(self.ns.fused(_pass_full_moved), arrays, lr, outputs=2)
        return stored, self._ball(_pass_ball_step, [params], moved, offsets, step.params, structure)


# --------------------------------------------------------------------------- Diagonal TO


def _largest_square(ns, x: list) -> float:
    """max_i x_i² over the structure (0 without entries), one host read: fl(max_i |x_i|)² = max_i fl(x_i²)
    (rounding is monotone), from each parameter's extremes, without an n-sized |x| or x². Maxima, not sums:
    no part of the step's reduction round."""
    xp = ns.xp
    extremes = [xp.stack([-xp.min(leaf), xp.max(leaf)]) for leaf in x if math.prod(leaf.shape)]
    if not extremes:
        return 0.0
    largest = xp.max(xp.stack(extremes))
    return float(largest * largest)


class DiagonalTO(_TrainableOptimizer):
    algo = "diagonal_to"
    layouts = {"step": COUNTER, "a": PARAM, "b": PARAM}
    linear_rate = "lr_a"

    def initial_state(self, structure, params):
        self.check_center(structure)
        return {"step": 0, "a": structure.zeros(), "b": structure.zeros()}

    def contraction(self, step, eta, eta_b):
        if not eta:
            return eta_b
        return eta * _largest_square(self.ns, step.params) + eta_b  # max_i c_i = η^a max_i x_i² + η^b

    def _F(self, state, step):
        t = state.stored["step"] + 1
        arrays = [state.stored["a"], state.stored["b"], step.params, step.grad]
        a, b = over_leaves(self.ns.fused(_pass_diagonal_variables), arrays, *self.rates(t), outputs=2)
        return {"step": t, "a": a, "b": b}

    def _update(self, state, step, lr):
        arrays = [state.stored["a"], state.stored["b"], step.params]
        return over_leaves(self.ns.fused(_pass_diagonal_update), arrays, lr)

    def _moved(self, state, step, lr):
        arrays = [state.stored["a"], state.stored["b"], step.params, self.center_parts(state.structure)]
        return over_leaves(self.ns.fused(_pass_diagonal_moved_from_state), arrays, lr, outputs=2)

    def _step(self, state, step, params):
        t = state.stored["step"] + 1
        scalars = (self.model_rate(t), *self.rates(t))
        arrays = [state.stored["a"], state.stored["b"], step.params, step.grad]
        if self.radius is None:
            a, b, theta = over_leaves(self.ns.fused(_pass_diagonal_step), [params, *arrays], *scalars, outputs=3)
            return {"step": t, "a": a, "b": b}, theta
        arrays.append(self.center_parts(state.structure))
        a, b, moved, offsets = over_leaves(self.ns.fused(_pass_diagonal_moved), arrays, *scalars, outputs=4)
        theta = self._ball(_pass_ball_step, [params], moved, offsets, step.params, state.structure)
        return {"step": t, "a": a, "b": b}, theta


# --------------------------------------------------------------------------- RankOne TO


class RankOneTO(_TrainableOptimizer):
    """One reduction round per step without a ball (module docstring)."""

    algo = "rank_one_to"
    layouts = {"step": COUNTER, "u": PARAM, "v": PARAM, "b": PARAM}
    linear_rate = "lr_uv"

    def initial_state(self, structure, params):
        self.check_center(structure)
        # u = v = 0 is a stationary point of ℓ in (u, v): v starts at the unit vector 1/√n (spec: initialisation)
        entry = 1 / math.sqrt(structure.n) if structure.n else 0.0
        xp, ns = self.ns.xp, self.ns
        v = [xp.full(shape, entry, dtype=ns.float, device=ns.device) for shape in structure.shapes]
        return {"step": 0, "u": structure.zeros(), "v": v, "b": structure.zeros()}

    def contraction(self, step, eta, eta_b):
        return eta_b  # ℓ is quartic in (u, v): only the b-part has the bound

    def _sums(self, state, step):
        """(vᵀx, uᵀr, xᵀx) of S_{t-1} as 0-d device arrays, from one round of per-parameter partial sums
        (vᵀx, uᵀu, uᵀb, uᵀg, xᵀx): uᵀr = (uᵀu)(vᵀx) + uᵀb − uᵀg."""
        xp, stored = self.ns.xp, state.stored
        partials = []
        for u, v, b, x, g in zip(stored["u"], stored["v"], stored["b"], step.params, step.grad):
            u, v, b, x, g = (xp.reshape(a, (-1,)) for a in (u, v, b, x, g))
            pairs = ((v, x), (u, u), (u, b), (u, g), (x, x))
            partials.append(xp.stack([xp.vecdot(p, q) for p, q in pairs]))
        sums = self.ns.reduce_sum(partials) if partials else self.ns.zeros((5,))
        vx, uu, ub, ug, xx = (sums[i] for i in range(5))
        return vx, uu * vx + ub - ug, xx

    def _arrays(self, state, step) -> list:
        return [state.stored["u"], state.stored["v"], state.stored["b"], step.params, step.grad]

    def _F(self, state, step):
        t = state.stored["step"] + 1
        vx, ur, _ = self._sums(state, step)
        kernel = self.ns.fused(_pass_rank_one_variables)
        u, v, b = over_leaves(kernel, self._arrays(state, step), vx, ur, *self.rates(t), outputs=3)
        return {"step": t, "u": u, "v": v, "b": b}

    def _vx(self, state, step):
        """vᵀx with S_t's v: one round."""
        return self.ns.inner(state.stored["v"], step.params)

    def _update(self, state, step, lr):
        arrays = [state.stored["u"], state.stored["b"]]
        return over_leaves(self.ns.fused(_pass_rank_one_update), arrays, self._vx(state, step), lr)

    def _moved(self, state, step, lr):
        arrays = [state.stored["u"], state.stored["b"], step.params, self.center_parts(state.structure)]
        return over_leaves(self.ns.fused(_pass_rank_one_moved_from_state), arrays, self._vx(state, step), lr, outputs=2)

    def _step(self, state, step, params):
        t = state.stored["step"] + 1
        eta_uv, eta_b = self.rates(t)
        vx, ur, xx = self._sums(state, step)
        next_vx = vx - eta_uv * ur * xx  # v_{t+1}ᵀx_t = v_tᵀx_t − η^{uv}(u_tᵀr_t)‖x_t‖²
        scalars = (vx, ur, next_vx, self.model_rate(t), eta_uv, eta_b)
        arrays = self._arrays(state, step)
        if self.radius is None:
            u, v, b, theta = over_leaves(self.ns.fused(_pass_rank_one_step), [params, *arrays], *scalars, outputs=4)
            return {"step": t, "u": u, "v": v, "b": b}, theta
        arrays.append(self.center_parts(state.structure))
        u, v, b, moved, offsets = over_leaves(self.ns.fused(_pass_rank_one_moved), arrays, *scalars, outputs=5)
        theta = self._ball(_pass_ball_step, [params], moved, offsets, step.params, state.structure)
        return {"step": t, "u": u, "v": v, "b": b}, theta


# --------------------------------------------------------------------------- constructors (the spec's signatures)


def _projection(radius, center, ns) -> dict:
    """The ball of (TO8), checked (``_hyperparameters.projection``): a centre given as a vector or a list of
    arrays shaped like the parameters is kept flat in the working precision."""

    def flat_center(center):
        parts, structure = as_arrays("center", center, HyperparameterError, ns)
        return structure.join(parts)

    return checked.projection(radius, center, flat_center)


def trainable_optimizer(
    lr, lr_A, lr_b=None, lr_decay=1.0, lr_opt_decay=1.0, radius=None, center=None, max_memory=2**30, *, ns
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
    return FullTO(ns, **_projection(radius, center, ns), **hp)


def diagonal_to(lr, lr_a, lr_b=None, lr_decay=1.0, lr_opt_decay=1.0, radius=None, center=None, *, ns):
    """Diagonal TO (paper 002, Algorithm 2): A = diag(a); ``lr_b`` defaults to ``lr_a``."""
    hp = hyperparameters(
        "diagonal_to",
        lr=lr,
        lr_a=lr_a,
        lr_b=lr_a if lr_b is None else lr_b,
        lr_decay=lr_decay,
        lr_opt_decay=lr_opt_decay,
    )
    return DiagonalTO(ns, **_projection(radius, center, ns), **hp)


def rank_one_to(lr, lr_uv, lr_b=None, lr_decay=1.0, lr_opt_decay=1.0, radius=None, center=None, *, ns):
    """RankOne TO (paper 002, Algorithm 3): A = u vᵀ; ``lr_b`` defaults to ``lr_uv``."""
    hp = hyperparameters(
        "rank_one_to",
        lr=lr,
        lr_uv=lr_uv,
        lr_b=lr_uv if lr_b is None else lr_b,
        lr_decay=lr_decay,
        lr_opt_decay=lr_opt_decay,
    )
    return RankOneTO(ns, **_projection(radius, center, ns), **hp)
