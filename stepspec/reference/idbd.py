"""IDBD (Sutton 1992) and its non-linear extension as MetaOptimize renders Xu et al. 2018,
spec/idbd.md. Written from the original definitions, not from MetaOptimize: that the two are
special cases of it is a conformance property, not a construction."""

from __future__ import annotations

import numpy as np

from .._core import Optimizer, State, state
from ..spec import check_hyperparameters


def hessian_diagonal(hvp, n: int) -> np.ndarray:
    """diag ∇²f by n Hessian-vector products; for IDBD's linear unit f = ½(aᵀw − b)² it is a²."""
    return np.array([hvp(e)[j] for j, e in enumerate(np.eye(n))])


def _step_sizes(theta0: np.ndarray, alpha0: float) -> dict:
    """β_0 = log α₀ and α₀ for every weight, in the precision of θ_0 (working_precision)."""
    n, dtype = theta0.shape[0], theta0.dtype
    return {"beta": np.full(n, np.log(alpha0), dtype), "alpha": np.full(n, float(alpha0), dtype)}


@state
class IDBDState(State):
    beta: np.ndarray  # (n,) log step sizes β_i, updated before the step that uses them
    alpha: np.ndarray  # (n,) the step sizes step t was taken with, e^β of S_t; α₀ at S_0
    h: np.ndarray  # (n,) traces h_i ≈ ∂w_i/∂β_i


class IDBD(Optimizer):
    algo = "idbd"
    State = IDBDState

    def initial_state(self, theta0):
        return {**_step_sizes(theta0, self.alpha0), "h": np.zeros_like(theta0)}

    def _F(self, s, obs):
        g = obs.grad  # (I1) g = ∇f = −δx for the linear unit
        x2 = hessian_diagonal(obs.hvp, g.shape[0])  # (I2) x_i² = diag ∇²f
        beta = s.beta - self.eta * g * s.h  # (I3) β_i ← β_i + θ δ x_i h_i
        alpha = np.exp(beta)  # (I4) α_i ← e^{β_i}, the new value used by (I5) and (I6)
        h = s.h * np.maximum(1 - alpha * x2, 0.0) - alpha * g  # (I6) h_i ← h_i[1 − α_i x_i²]⁺ + α_i δ x_i
        return IDBDState(beta=beta, alpha=alpha, h=h)

    def _G(self, s, obs):
        return -s.alpha * obs.grad  # (I5) w_i ← w_i + α_i δ x_i with the new α_i of S_t


def idbd(alpha0=0.05, eta=0.01):
    """IDBD, spec/idbd.md#idbd (Sutton 1992, Fig. 2): weight-wise exponential step sizes."""
    return IDBD(needs=frozenset({"grad", "hvp"}), **check_hyperparameters("idbd", alpha0=alpha0, eta=eta))


@state
class IDBDNonlinearState(State):
    beta: np.ndarray  # (n,) log step sizes, updated before the step that uses them
    alpha: np.ndarray  # (n,) the step sizes step t was taken with, e^β of S_t; α₀ at S_0
    H: np.ndarray  # (n, n) trace of dw/dβ


class IDBDNonlinear(Optimizer):
    algo = "idbd_nonlinear"
    State = IDBDNonlinearState

    def initial_state(self, theta0):
        n = theta0.shape[0]
        return {**_step_sizes(theta0, self.alpha0), "H": np.zeros((n, n), theta0.dtype)}

    def _F(self, s, obs):
        g = obs.grad
        beta = s.beta - self.eta * (s.H.T @ g)  # (I7) β_{t+1} = β_t − η H_tᵀ∇f_t(w_t)
        alpha = np.exp(beta)  # (I8)
        hess_H = np.column_stack([obs.hvp(column) for column in s.H.T])  # ∇²f H as n products
        H = s.H - alpha[:, None] * hess_H - np.diag(alpha * g)  # (I10) H' = (I − [α]∇²f)H − [α∇f]
        return IDBDNonlinearState(beta=beta, alpha=alpha, H=H)

    def _G(self, s, obs):
        return -s.alpha * obs.grad  # (I9) w_{t+1} = w_t − α_{t+1}∇f_t(w_t)


def idbd_nonlinear(alpha0=0.05, eta=0.01):
    """IDBD for non-linear f as in MetaOptimize's App. B.1 (attributed to Xu et al. 2018),
    spec/idbd.md#idbd_nonlinear: exact Hessian, no clipping."""
    hp = check_hyperparameters("idbd_nonlinear", alpha0=alpha0, eta=eta)
    return IDBDNonlinear(needs=frozenset({"grad", "hvp"}), **hp)
