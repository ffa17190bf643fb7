"""RLLC, LM-RLLC and fixed-law linear memory, spec/rllc.md (paper 000, Sec. 3–5).

Equation tags (R1)… are those of the spec page; each cites the paper's definition it implements.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .._core import Optimizer, State, as_real_array, as_vector, state
from ..errors import HyperparameterError
from ..spec import check_hyperparameters

# --------------------------------------------------------------------------- the equations


def relaxed_pinv(M: np.ndarray, eps: float) -> np.ndarray:
    """M_ε⁺, the k×n relaxed Moore–Penrose inverse of Remark 3.5, in the SVD M = U diag(σ) Vᵀ.

    eps = 0: the exact M⁺ = V diag(1/σ) Uᵀ over the non-zero σ (R3a).
    eps > 0: Tikhonov, M_ε⁺ = (MᵀM + εI)⁻¹Mᵀ = V diag(σ/(σ² + ε)) Uᵀ over the non-zero σ (R3b).
    For every ε, σ ≤ √(n·k)·u·σ_max (u the roundoff of M's precision) counts as zero (R3c): such a
    singular value is round-off of M's entries, not information, and σ/ε would amplify it.
    """
    U, sigma, Vt = np.linalg.svd(M, full_matrices=False)
    cutoff = math.sqrt(M.size) * np.finfo(M.dtype).eps * sigma.max(initial=0.0)
    kept = sigma > cutoff
    if eps == 0:
        coefficients = np.divide(1.0, sigma, out=np.zeros_like(sigma), where=kept)
    else:
        coefficients = sigma / (sigma * sigma + eps)
        coefficients[~kept] = 0.0
    return (Vt.T * coefficients) @ U.T


def law_update(L: np.ndarray, M_prev: np.ndarray, g: np.ndarray, c2: float, eps: float) -> np.ndarray:
    """(R1) the RLLC step: L_t = L_{t-1} + c2 M_{t-1}⁺ g_t (paper 000, algorithm after Def. 3.2)."""
    return L + c2 * (relaxed_pinv(M_prev, eps) @ g)


def learning_step(M: np.ndarray, L: np.ndarray, c1: float) -> np.ndarray:
    """(R2) G(M, H, L, g) = −c1 M L (Def. 3.2), applied to the new state: θ_t = θ_{t-1} − c1 M_t L_t."""
    return -c1 * (M @ L)


def linear_memory_update(M: np.ndarray, g: np.ndarray, B: np.ndarray, a: np.ndarray) -> np.ndarray:
    """(R4) eq. (1): U(M, g) = M B + g aᵀ; unit m_i becomes a_i g + Σ_j B_{j,i} m_j."""
    return M @ B + np.outer(g, a)


# --------------------------------------------------------------------------- hyperparameter checks


def spectral_radius(B: np.ndarray) -> float:
    return float(np.max(np.abs(np.linalg.eigvals(B)), initial=0.0))


def check_propagator(B, a) -> tuple[np.ndarray, np.ndarray]:
    """(B, a) of eq. (1): B a real k×k matrix with spectral radius ρ(B) < 1, a ∈ ℝ^k."""
    B = as_real_array("B", B, HyperparameterError)
    if B.ndim != 2 or B.shape[0] != B.shape[1] or B.shape[0] == 0:
        raise HyperparameterError("B", f"must be a square k×k matrix with k ≥ 1, got shape {B.shape}")
    rho = spectral_radius(B)
    if not rho < 1:
        raise HyperparameterError(
            "B", f"spectral radius ρ(B) = {rho:.6g} must be < 1, or the memory does not forget (spec/rllc.md)"
        )
    a = as_vector("a", a, HyperparameterError, B.shape[0])
    return B, a


def unit_gain_law(B: np.ndarray, a: np.ndarray) -> np.ndarray:
    """stepspec's default L0 (spec/rllc.md#lm_rllc): the minimum-norm law with unit steady-state gain.

    Under a constant gradient g the memory tends to M∞ = g aᵀ(I − B)⁻¹, so the step tends to
    −c1 g · wᵀL with w = (I − B)⁻ᵀ a; L0 = w/‖w‖² makes that −c1 g, so c1 acts as a learning rate.
    """
    w = np.linalg.solve((np.eye(B.shape[0], dtype=B.dtype) - B).T, a)
    norm2 = float(w @ w)
    if norm2 == 0:
        raise HyperparameterError("L0", "the default unit-gain law is undefined for a = 0; pass L0")
    return w / norm2


# --------------------------------------------------------------------------- RLLC with an arbitrary rule


@state
class RLLCState(State):
    M: np.ndarray  # (n, k) memory units as columns
    H: object  # hidden state of the memory rule
    L: np.ndarray  # (k,) learning law


class RLLC(Optimizer):
    algo = "rllc"
    State = RLLCState

    def initial_state(self, theta0):
        return {"M": np.zeros((theta0.shape[0], self.L0.shape[0]), theta0.dtype), "H": self.H0, "L": self.L0}

    def _F(self, s, obs):
        g = obs.grad
        L = law_update(s.L, s.M, g, self.c2, self.eps)  # (R1) L_t = L_{t-1} + c2 M_{t-1}⁺ g_t
        M, H = self.rule(s.M, s.H, g)  # (R5) (M_t, H_t) = U(M_{t-1}, H_{t-1}, g_t)
        M = as_real_array("rule", M, HyperparameterError, s.M.shape)
        return RLLCState(M=M, H=H, L=L)

    def _G(self, s, obs):
        return learning_step(s.M, s.L, self.c1)  # (R2)


def rllc(rule: Callable, c1, c2, L0, eps=1e-8, H0=None):
    """RLLC of an arbitrary memory rule U(M, H, g) -> (M', H'), spec/rllc.md#rllc (paper 000, Def. 3.2).

    k = len(L0) memory units; M_0 = 0 and H_0 = H0 unless ``init`` overrides them.
    """
    if not callable(rule):
        raise HyperparameterError("rule", f"must be callable U(M, H, g) -> (M', H'), got {type(rule).__name__}")
    hp = check_hyperparameters("rllc", c1=c1, c2=c2, eps=eps)
    L0 = as_vector("L0", L0, HyperparameterError)
    if L0.shape[0] == 0:
        raise HyperparameterError("L0", "must have k ≥ 1 entries")
    return RLLC(rule=rule, L0=L0, H0=H0, **hp)


# --------------------------------------------------------------------------- LM-RLLC


@state
class LMRLLCState(State):
    M: np.ndarray  # (n, k) memory units as columns
    L: np.ndarray  # (k,) learning law


class LMRLLC(Optimizer):
    algo = "lm_rllc"
    State = LMRLLCState

    def initial_state(self, theta0):
        return {"M": np.zeros((theta0.shape[0], self.B.shape[0]), theta0.dtype), "L": self.L0}

    def _F(self, s, obs):
        g = obs.grad
        return LMRLLCState(
            M=linear_memory_update(s.M, g, self.B, self.a),  # (R4) M_t = M_{t-1} B + g_t aᵀ
            L=law_update(s.L, s.M, g, self.c2, self.eps),  # (R1) L_t = L_{t-1} + c2 M_{t-1}⁺ g_t
        )

    def _G(self, s, obs):
        return learning_step(s.M, s.L, self.c1)  # (R2) θ_t = θ_{t-1} − c1 M_t L_t


def lm_rllc(B, a, c1=1e-2, c2=1e-2, L0=None, eps=1e-8):
    """LM-RLLC F(B, a, c1, c2), spec/rllc.md#lm_rllc (paper 000, Def. 5.1).

    ``lm_rllc(*propagator("M(0.9) ⊕ M(0)"), c1=0.1)`` builds it from the paper's notation.
    L0 defaults to the unit-gain law (``unit_gain_law``), a stepspec choice.
    """
    B, a = check_propagator(B, a)
    hp = check_hyperparameters("lm_rllc", c1=c1, c2=c2, eps=eps)
    L0 = unit_gain_law(B, a) if L0 is None else as_vector("L0", L0, HyperparameterError, B.shape[0])
    return LMRLLC(B=B, a=a, L0=L0, **hp)


# --------------------------------------------------------------------------- fixed-law linear memory


@state
class LinearMemoryState(State):
    M: np.ndarray  # (n, k) memory units as columns


class LinearMemory(Optimizer):
    algo = "linear_memory"
    State = LinearMemoryState

    def initial_state(self, theta0):
        return {"M": np.zeros((theta0.shape[0], self.B.shape[0]), theta0.dtype)}

    def _F(self, s, obs):
        return LinearMemoryState(M=linear_memory_update(s.M, obs.grad, self.B, self.a))  # (R4)

    def _G(self, s, obs):
        return -(s.M @ self.L)  # (R6) Sec. 4: θ_t = θ_{t-1} − M_t L, no c1


def linear_memory(B, a, L):
    """The fixed-law optimizer L(B, a, L), spec/rllc.md#linear_memory (paper 000, Sec. 4)."""
    B, a = check_propagator(B, a)
    return LinearMemory(B=B, a=a, L=as_vector("L", L, HyperparameterError, B.shape[0]))
