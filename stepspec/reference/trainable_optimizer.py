"""The Trainable Optimizer (Wang & Klabjan, paper 002), spec/trainable_optimizer.md: the full
pseudo-linear TO (Algorithm 1), Diagonal TO (Algorithm 2) and RankOne TO (Algorithm 3).

The gradient is approximated by ĝ(x) = A x + b, and the optimizer variables (A, b) follow one gradient
step on the approximation loss ℓ_t = ½‖ĝ(x_t) − g_t‖² before the model steps along the new ĝ(x_t).
The paper's formulas were lost; each line cites the reconstruction in the spec page.
"""

from __future__ import annotations

import abc
import math
import warnings

import numpy as np

from .._core import Optimizer, State, as_vector, state
from ..errors import HyperparameterError, StateError, StepSizeWarning
from ..spec import check_hyperparameters

FLOAT64_BYTES = 8


@state
class FullTOState(State):
    step: int  # t, the number of steps taken (the schedules' exponent is t − 1)
    A: np.ndarray  # (n, n) the linear part of ĝ
    b: np.ndarray  # (n,) the offset of ĝ


@state
class DiagonalTOState(State):
    step: int
    a: np.ndarray  # (n,) ĝ(x) = a ⊙ x + b
    b: np.ndarray


@state
class RankOneTOState(State):
    step: int
    u: np.ndarray  # (n,) ĝ(x) = u (vᵀx) + b
    v: np.ndarray
    b: np.ndarray


class _TrainableOptimizer(Optimizer):
    """What the three variants share: the schedules (TO1), the model step with its optional
    projection (TO7, TO8) and the check of the optimizer-variable step size (TO9)."""

    def model_rate(self, t: int) -> float:
        return self.lr * self.lr_decay ** (t - 1)  # (TO1) α_t = α₀ ρ_α^{t−1}

    def variable_rate(self, initial: float, t: int) -> float:
        return initial * self.lr_opt_decay ** (t - 1)  # (TO1) η_t = η₀ ρ_η^{t−1}

    @abc.abstractmethod
    def approximation(self, s: State, x: np.ndarray) -> np.ndarray:
        """ĝ(x) under the optimizer variables of state ``s``."""

    def _G(self, s, obs):
        x = obs.params
        moved = x - self.model_rate(s.step) * self.approximation(s, x)  # (TO7) x − α_t ĝ_t, ĝ_t from S_t
        return self.project(moved) - x  # (TO8) x_{t+1} = Π_X(x_t − α_t ĝ_t)

    def project(self, y: np.ndarray) -> np.ndarray:
        """Π_X onto the ball ‖y − centre‖ ≤ radius; the identity without a radius or inside the ball."""
        if self.radius is None:
            return y
        centre = np.zeros_like(y) if self.center is None else self.center
        offset = y - centre
        distance = float(np.linalg.norm(offset))
        return y if distance <= self.radius else centre + offset * (self.radius / distance)

    def check_center(self, n: int) -> None:
        if self.center is not None and self.center.shape != (n,):
            raise HyperparameterError("center", f"has shape {self.center.shape}, but the parameters have n = {n}")

    def warn_if_expanding(self, contraction: float) -> None:
        """(TO9) At a fixed x the step multiplies the residual by 1 − c (by 1 − c_i per entry for
        Diagonal TO): c ≥ 2 makes it grow instead of shrink. One fixed message, so that Python's
        default filter shows it once per run rather than at every step."""
        if contraction >= 2.0:
            warnings.warn(
                f"{self.algo}: an optimizer-variable step with c ≥ 2 amplifies the approximation error "
                "(spec/trainable_optimizer.md#step-size-bound); lower the optimizer-variable rates",
                StepSizeWarning,
                stacklevel=4,  # the caller of F
            )


class FullTO(_TrainableOptimizer):
    algo = "trainable_optimizer"
    State = FullTOState

    def initial_state(self, theta0):
        n = theta0.shape[0]
        needed = (n * n + n) * FLOAT64_BYTES
        if needed > self.max_memory:
            raise StateError(
                "theta0",
                f"full TO with n = {n} needs (n² + n)·8 = {needed:,} bytes of state, above max_memory = "
                f"{self.max_memory:,.0f}; use diagonal_to or rank_one_to (O(n) memory), or raise max_memory",
            )
        self.check_center(n)
        return {
            "step": 0,
            "A": np.zeros((n, n), theta0.dtype),
            "b": np.zeros_like(theta0),
        }  # the paper's recommended A₀ = 0, b₀ = 0

    def approximation(self, s, x):
        return s.A @ x + s.b  # ĝ(x) = A x + b

    def _F(self, s, obs):
        x, g, t = obs.params, obs.grad, s.step + 1
        eta_A, eta_b = self.variable_rate(self.lr_A, t), self.variable_rate(self.lr_b, t)
        r = s.A @ x + s.b - g  # (TO2) r_t = A_t x_t + b_t − g_t, ∇_A ℓ = r xᵀ, ∇_b ℓ = r
        self.warn_if_expanding(eta_A * float(x @ x) + eta_b)
        A = s.A - np.outer(eta_A * r, x)  # (TO3) line 5: A_{t+1} = A_t − η^A_t r_t x_tᵀ
        b = s.b - eta_b * r  # (TO4) line 6: b_{t+1} = b_t − η^b_t r_t
        return FullTOState(step=t, A=A, b=b)


class DiagonalTO(_TrainableOptimizer):
    algo = "diagonal_to"
    State = DiagonalTOState

    def initial_state(self, theta0):
        self.check_center(theta0.shape[0])
        return {"step": 0, "a": np.zeros_like(theta0), "b": np.zeros_like(theta0)}

    def approximation(self, s, x):
        return s.a * x + s.b  # ĝ(x) = a ⊙ x + b

    def _F(self, s, obs):
        x, g, t = obs.params, obs.grad, s.step + 1
        eta_a, eta_b = self.variable_rate(self.lr_a, t), self.variable_rate(self.lr_b, t)
        r = s.a * x + s.b - g  # (TO2) r_t = a_t ⊙ x_t + b_t − g_t, ∇_a ℓ = r ⊙ x
        self.warn_if_expanding(eta_a * float(np.max(x * x)) + eta_b)
        a = s.a - eta_a * r * x  # (TO5) Alg. 2 line 5: a_{t+1} = a_t − η^a_t r_t ⊙ x_t
        b = s.b - eta_b * r  # (TO4)
        return DiagonalTOState(step=t, a=a, b=b)


class RankOneTO(_TrainableOptimizer):
    algo = "rank_one_to"
    State = RankOneTOState

    def initial_state(self, theta0):
        n = theta0.shape[0]
        self.check_center(n)
        # u = v = 0 is a stationary point of ℓ in (u, v): start v off it (spec: RankOne initialisation)
        return {
            "step": 0,
            "u": np.zeros_like(theta0),
            "v": np.full_like(theta0, 1 / math.sqrt(n)),
            "b": np.zeros_like(theta0),
        }

    def approximation(self, s, x):
        return s.u * float(s.v @ x) + s.b  # ĝ(x) = u (vᵀx) + b

    def _F(self, s, obs):
        x, g, t = obs.params, obs.grad, s.step + 1
        eta_uv, eta_b = self.variable_rate(self.lr_uv, t), self.variable_rate(self.lr_b, t)
        vx = float(s.v @ x)
        r = s.u * vx + s.b - g  # (TO2) with A = u vᵀ, from the old u, v, b
        self.warn_if_expanding(eta_b)  # ℓ is quartic in (u, v): only the b-part has the bound
        u = s.u - eta_uv * r * vx  # (TO6) Alg. 3: u_{t+1} = u_t − η r_t (v_tᵀx_t)  [= (∇_A ℓ) v]
        v = s.v - eta_uv * x * float(s.u @ r)  # (TO6) v_{t+1} = v_t − η x_t (u_tᵀr_t)  [= (∇_A ℓ)ᵀ u]
        b = s.b - eta_b * r  # (TO4)
        return RankOneTOState(step=t, u=u, v=v, b=b)


_NEEDS = frozenset({"grad", "params"})


def _projection(radius, center) -> dict:
    """The ball of (TO8): radius None (no projection) or in (0, ∞); center None (the origin) or a vector."""
    if radius is not None:
        if isinstance(radius, bool) or not isinstance(radius, (int, float, np.integer, np.floating)):
            raise HyperparameterError("radius", f"must be None or a real number in (0, ∞), got {radius!r}")
        if not (math.isfinite(radius) and radius > 0):
            raise HyperparameterError("radius", f"must be None or a real number in (0, ∞), got {radius!r}")
        radius = float(radius)
    if center is not None:
        if radius is None:
            raise HyperparameterError("center", "is the centre of the projection ball: it needs a radius")
        center = as_vector("center", center, HyperparameterError)
    return {"radius": radius, "center": center}


def trainable_optimizer(
    lr,
    lr_A,
    lr_b=None,
    lr_decay=1.0,
    lr_opt_decay=1.0,
    radius=None,
    center=None,
    max_memory=2**30,
):
    """Pseudo-linear TO, spec/trainable_optimizer.md#trainable_optimizer (paper 002, Algorithm 1):
    n² + n optimizer variables; ``lr_b`` defaults to ``lr_A``."""
    hp = check_hyperparameters(
        "trainable_optimizer",
        lr=lr,
        lr_A=lr_A,
        lr_b=lr_A if lr_b is None else lr_b,
        lr_decay=lr_decay,
        lr_opt_decay=lr_opt_decay,
        max_memory=max_memory,
    )
    return FullTO(needs=_NEEDS, **hp, **_projection(radius, center))


def diagonal_to(lr, lr_a, lr_b=None, lr_decay=1.0, lr_opt_decay=1.0, radius=None, center=None):
    """Diagonal TO, spec/trainable_optimizer.md#diagonal_to (paper 002, Algorithm 2): A = diag(a);
    ``lr_b`` defaults to ``lr_a`` (the paper's single η)."""
    hp = check_hyperparameters(
        "diagonal_to",
        lr=lr,
        lr_a=lr_a,
        lr_b=lr_a if lr_b is None else lr_b,
        lr_decay=lr_decay,
        lr_opt_decay=lr_opt_decay,
    )
    return DiagonalTO(needs=_NEEDS, **hp, **_projection(radius, center))


def rank_one_to(lr, lr_uv, lr_b=None, lr_decay=1.0, lr_opt_decay=1.0, radius=None, center=None):
    """RankOne TO, spec/trainable_optimizer.md#rank_one_to (paper 002, Algorithm 3): A = u vᵀ;
    ``lr_b`` defaults to ``lr_uv`` (the paper's single η)."""
    hp = check_hyperparameters(
        "rank_one_to",
        lr=lr,
        lr_uv=lr_uv,
        lr_b=lr_uv if lr_b is None else lr_b,
        lr_decay=lr_decay,
        lr_opt_decay=lr_opt_decay,
    )
    return RankOneTO(needs=_NEEDS, **hp, **_projection(radius, center))
