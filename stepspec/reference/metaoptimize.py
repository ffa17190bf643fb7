"""MetaOptimize, spec/metaoptimize.md (paper 003: Algorithm 1, eq. 15, Appendix A).

Every base and meta update is elementwise, so each is written as a *cell*: the new values and
their partial derivatives (diagonals), tags (M…) of the spec page. ``MetaOptimize._F`` applies
the recursion (15) block by block, with Hessian terms only as Hessian-vector products.

Trace layout (Algorithm 1's Y, X, Q):
  Y = [Y^β; Y^m̄; Y^v̄]  (3m × m)   β and the meta state
  X = [H; X^m; X^v]      (3n × m)   w (so H = X[:n]) and the base state
  Q                      (nm × m)   vec(H), columns of H stacked; only for the full approximation
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._core import Optimizer, State, as_real_array, state
from ..errors import HyperparameterError
from ..spec import check_hyperparameters

BASES = ("sgd", "sgdm", "adamw", "rmsprop", "lion")
METAS = ("sgd", "adam", "rmsprop", "lion", "fixed")

PAPER_EPS = 1e-8
"""ε and ε̄ of the paper convention: Alg. 3 prints none; torch's default, outside the root."""
AUTHORS_CODE_EPS = 1e-10
"""ε and ε̄ of convention='authors_code': HF.py's single `epsilon`, inside the root, base and meta alike."""


# --------------------------------------------------------------------------- step sizes α = σ(β) (eq. 3)


def sigma(kind: str, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(σ(β), σ'(β), σ''(β)), entrywise: exponential (Sutton 1992) or identity (additive, Baydin 2017). (M1)"""
    if kind == "exponential":
        alpha = np.exp(beta)
        return alpha, alpha, alpha
    return beta, np.ones_like(beta), np.zeros_like(beta)


def sigma_inverse(kind: str, alpha0: float) -> float:
    return float(np.log(alpha0)) if kind == "exponential" else float(alpha0)


# --------------------------------------------------------------------------- the normaliser a/(√s + ε)


@dataclass(frozen=True)
class Normalised:
    """N(a, s) = a/(√s + ε) (ε outside, the torch convention) or a/√(s + ε) (ε inside, the authors'
    code), with N_a, N_s, N_as, N_ss (N_aa = 0). Where s = 0 forces a = 0 (a coordinate that never saw
    a gradient), N = 0 and the s-derivatives, unbounded there, are taken as 0. (M2)"""

    value: np.ndarray
    a: np.ndarray
    s: np.ndarray
    as_: np.ndarray
    ss: np.ndarray


def normalised(a: np.ndarray, s: np.ndarray, eps: float, eps_inside: bool) -> Normalised:
    # The s-derivatives fall like 1/s as s → ∞ and grow like s^(-3/2) as s → 0: in float32 the products in them
    # leave the range (overflow above √s ≈ 1e13; r³q³ underflows below √s ≈ 1e-7 at ε = 1e-8), and IEEE gives 0
    # or ±inf, which only the traces that read them see (spec/metaoptimize.md#float32).
    with np.errstate(over="ignore", divide="ignore"):
        if eps_inside:
            root = np.sqrt(s + eps)
            return Normalised(a / root, 1 / root, -a / (2 * root**3), -1 / (2 * root**3), 3 * a / (4 * root**5))
        r = np.sqrt(s)
        q = r + eps
        positive = r > 0

        def where_positive(numerator, denominator):
            return np.divide(numerator, denominator, out=np.zeros_like(r), where=positive)

        return Normalised(
            value=a / q,
            a=1 / q,
            s=where_positive(-a, 2 * r * q**2),
            as_=where_positive(-np.ones_like(r), 2 * r * q**2),
            ss=where_positive(a * (q + 2 * r), 4 * r**3 * q**3),
        )


# --------------------------------------------------------------------------- base cells (M3)–(M8)


@dataclass(frozen=True)
class BaseCell:
    """One base update, entrywise over the n weights: new internals m', v', the direction D with
    Δw = −α⊙D − κα⊙w (M3), and partial derivatives. ∂m'/∂v = ∂v'/∂m = 0 for every base."""

    m: np.ndarray
    v: np.ndarray
    D: np.ndarray
    m_g: np.ndarray
    m_m: np.ndarray
    v_g: np.ndarray
    v_v: np.ndarray
    D_g: np.ndarray
    D_m: np.ndarray
    D_v: np.ndarray
    D_gg: np.ndarray
    D_gm: np.ndarray
    D_gv: np.ndarray
    D_mm: np.ndarray
    D_mv: np.ndarray
    D_vv: np.ndarray


def _cell(g, **parts) -> BaseCell:
    zero, one = np.zeros_like(g), np.ones_like(g)
    defaults = dict(
        m_g=zero,
        m_m=one,
        v_g=zero,
        v_v=one,
        D_g=zero,
        D_m=zero,
        D_v=zero,
        D_gg=zero,
        D_gm=zero,
        D_gv=zero,
        D_mm=zero,
        D_mv=zero,
        D_vv=zero,
    )
    return BaseCell(**{**defaults, **parts})


def _through_normaliser(g, m, v, N: Normalised, a_g, a_m, s_g, s_v, s_gg, **parts) -> BaseCell:
    """D = N(a(g, m), s(g, v)) with a linear and s quadratic in g: the chain rule to (g, m, v). (M8)"""
    return _cell(
        g,
        m=m,
        v=v,
        D=N.value,
        D_g=N.a * a_g + N.s * s_g,
        D_m=N.a * a_m,
        D_v=N.s * s_v,
        D_gg=N.ss * s_g**2 + 2 * N.as_ * a_g * s_g + N.s * s_gg,
        D_gm=N.as_ * a_m * s_g,
        D_gv=N.ss * s_g * s_v + N.as_ * a_g * s_v,
        D_mv=N.as_ * a_m * s_v,
        D_vv=N.ss * s_v**2,
        **parts,
    )


def base_cell(name, g, m, v, t, hp, authors_code=False) -> BaseCell:
    rho, lam, c, eps = hp["rho"], hp["lam"], hp["c"], hp["eps"]
    if name == "sgd":  # (M4) D = g
        return _cell(g, m=m, v=v, D=g, D_g=np.ones_like(g))
    if name == "sgdm":
        new_m = rho * m + (1 - rho) * g  # m' = ρm + (1 − ρ)g
        if authors_code:  # the step uses the old momentum m_t
            return _cell(
                g, m=new_m, v=v, D=m, m_g=np.full_like(g, 1 - rho), m_m=np.full_like(g, rho), D_m=np.ones_like(g)
            )
        return _cell(
            g,
            m=new_m,
            v=v,
            D=new_m,
            m_g=np.full_like(g, 1 - rho),
            m_m=np.full_like(g, rho),
            D_g=np.full_like(g, 1 - rho),
            D_m=np.full_like(g, rho),
        )  # (M5) D = m'
    if name == "lion":  # (M7) D = sign(c m + (1 − c) g) with the old m; m' = ρm + (1 − ρ)g
        return _cell(
            g,
            m=rho * m + (1 - rho) * g,
            v=v,
            D=np.sign(c * m + (1 - c) * g),
            m_g=np.full_like(g, 1 - rho),
            m_m=np.full_like(g, rho),
        )
    if authors_code:  # un-normalised sums, bias-corrected v, ε inside the root (spec: authors' code)
        mu = (1 - lam) / (1 - lam**t)
        new_v = lam * v + g * g
        s, s_g, s_v, s_gg = mu * new_v, 2 * mu * g, np.full_like(g, mu * lam), np.full_like(g, 2 * mu)
        if name == "rmsprop":
            N = normalised(g, s, eps, eps_inside=True)
            return _through_normaliser(g, m, new_v, N, 1.0, 0.0, s_g, s_v, s_gg, v_g=2 * g, v_v=np.full_like(g, lam))
        new_m = rho * m + g
        N = normalised(new_m, s, eps, eps_inside=True)
        return _through_normaliser(
            g,
            new_m,
            new_v,
            N,
            1.0,
            rho,
            s_g,
            s_v,
            s_gg,
            m_g=np.ones_like(g),
            m_m=np.full_like(g, rho),
            v_g=2 * g,
            v_v=np.full_like(g, lam),
        )
    new_v = lam * v + (1 - lam) * g * g  # v' = λv + (1 − λ)g²
    v_g, v_v = 2 * (1 - lam) * g, np.full_like(g, lam)
    if name == "rmsprop":  # (M6) D = g/(√v' + ε), torch.optim.RMSprop with lr α
        N = normalised(g, new_v, eps, eps_inside=False)
        return _through_normaliser(g, m, new_v, N, 1.0, 0.0, v_g, v_v, np.full_like(g, 2 * (1 - lam)), v_g=v_g, v_v=v_v)
    new_m = rho * m + (1 - rho) * g  # (M8) adamw: D = m̂/(√v̂ + ε), m̂ = m'/(1 − ρ^t), v̂ = v'/(1 − λ^t)
    b1, b2 = 1 - rho**t, 1 - lam**t
    N = normalised(new_m / b1, new_v / b2, eps, eps_inside=False)
    return _through_normaliser(
        g,
        new_m,
        new_v,
        N,
        (1 - rho) / b1,
        rho / b1,
        v_g / b2,
        v_v / b2,
        np.full_like(g, 2 * (1 - lam) / b2),
        m_g=np.full_like(g, 1 - rho),
        m_m=np.full_like(g, rho),
        v_g=v_g,
        v_v=v_v,
    )


# --------------------------------------------------------------------------- meta cells (M9)–(M12)


@dataclass(frozen=True)
class MetaCell:
    """One meta update, entrywise over the m step-size parameters, z = Hᵀg the surrogate gradient:
    β' = (1 − ηκ̄)β − η·U (M9), new meta state m̄', v̄', and partial derivatives."""

    beta: np.ndarray
    m: np.ndarray
    v: np.ndarray
    beta_beta: np.ndarray
    beta_m: np.ndarray
    beta_v: np.ndarray
    beta_z: np.ndarray
    m_m: np.ndarray
    m_z: np.ndarray
    v_v: np.ndarray
    v_z: np.ndarray


def meta_cell(name, beta, m, v, z, t, hp, authors_code=False) -> MetaCell:
    eta, rho, lam, c, eps = hp["eta"], hp["meta_rho"], hp["meta_lam"], hp["meta_c"], hp["meta_eps"]
    zero, one = np.zeros_like(z), np.ones_like(z)
    shrink = np.full_like(z, 1 - eta * hp["meta_kappa"])  # meta weight decay κ̄ (authors' code form)
    common = dict(beta_beta=shrink, beta_m=zero, beta_v=zero, m=m, v=v, m_m=one, m_z=zero, v_v=one, v_z=zero)
    if name == "fixed":  # β' = β: no step and no decay, the authors' code's `fixed` (= any meta at η = 0)
        return MetaCell(beta=beta, beta_z=zero, **{**common, "beta_beta": one})
    if name == "sgd":  # (M10) U = z
        return MetaCell(beta=shrink * beta - eta * z, beta_z=np.full_like(z, -eta), **common)
    if name == "lion":  # (M12) U = sign(c̄ m̄ + (1 − c̄) z) with the old m̄; m̄' = ρ̄m̄ + (1 − ρ̄)z
        common.update(m=rho * m + (1 - rho) * z, m_m=np.full_like(z, rho), m_z=np.full_like(z, 1 - rho))
        return MetaCell(beta=shrink * beta - eta * np.sign(c * m + (1 - c) * z), beta_z=zero, **common)
    if authors_code:
        mu = (1 - lam) / (1 - lam**t)
        new_v, v_z = lam * v + z * z, 2 * z
        s, s_z, s_v = mu * new_v, 2 * mu * z, mu * lam
        eps_inside = True
        if name == "adam":
            a, a_z, a_m, new_m, m_z = rho * m + z, one, rho, rho * m + z, one
    else:
        new_v, v_z = lam * v + (1 - lam) * z * z, 2 * (1 - lam) * z
        s, s_z, s_v = new_v, v_z, lam
        eps_inside = False
        if name == "adam":  # (M11) U = m̂/(√v̂ + ε̄), bias-corrected new moments: torch's order (disambiguation 8)
            b1, b2 = 1 - rho**t, 1 - lam**t
            new_m = rho * m + (1 - rho) * z
            a, a_z, a_m, m_z = new_m / b1, (1 - rho) / b1, rho / b1, np.full_like(z, 1 - rho)
            s, s_z, s_v = s / b2, s_z / b2, s_v / b2
    if name == "rmsprop":  # (M11) U = z/(√v̄' + ε̄)
        a, a_z, a_m = z, one, 0.0
    N = normalised(a, s, eps, eps_inside)
    common.update(v=new_v, v_v=np.full_like(z, lam), v_z=v_z, beta_v=-eta * N.s * s_v)
    if name == "adam":
        common.update(m=new_m, m_m=np.full_like(z, rho), m_z=m_z, beta_m=-eta * N.a * a_m)
    return MetaCell(beta=shrink * beta - eta * N.value, beta_z=-eta * (N.a * a_z + N.s * s_z), **common)


# --------------------------------------------------------------------------- the optimizer


@state
class MetaOptimizeState(State):
    step: int  # t
    beta: np.ndarray  # (m,) β_t: the next step's (base_first) or this step's (meta_first) step-size parameters
    alpha: np.ndarray  # (m,) the step sizes step t was taken with, σ(β_{t-1}) or σ(β_t) by order; α₀ at S_0
    m: np.ndarray  # (n,) base momentum (zero for bases without one)
    v: np.ndarray  # (n,) base second moment (zero for bases without one)
    meta_m: np.ndarray  # (m,) meta momentum m̄
    meta_v: np.ndarray  # (m,) meta second moment v̄
    Y: np.ndarray  # (3m, m) [Y^β; Y^m̄; Y^v̄]
    X: np.ndarray  # (3n, m) [H; X^m; X^v]
    Q: np.ndarray  # (nm, m) for the full approximation, else (0, m)
    delta: np.ndarray  # (n,) θ_t − θ_{t-1}, computed by F and returned by G


class MetaOptimize(Optimizer):
    algo = "metaoptimize"
    State = MetaOptimizeState

    # -- granularity ------------------------------------------------------------------

    def block_index(self, n: int) -> np.ndarray:
        """b(j): the step-size parameter of weight j; m = max b + 1. (M1)"""
        if isinstance(self.blocks, str):
            return np.zeros(n, dtype=int) if self.blocks == "scalar" else np.arange(n)
        if self.blocks.shape != (n,):
            raise HyperparameterError(
                "blocks", f"assigns {self.blocks.shape[0]} weights to blocks, but the parameters have n = {n}"
            )
        return self.blocks

    def initial_state(self, theta0):
        n, dtype = theta0.shape[0], theta0.dtype  # every array in the precision of θ (working_precision)
        m = int(self.block_index(n).max()) + 1
        Y = np.zeros((3 * m, m), dtype)
        Y[:m] = np.eye(m)  # Algorithm 1: Y_0 = [I | 0]ᵀ
        return {
            "step": 0,
            "beta": np.full(m, sigma_inverse(self.sigma, self.alpha0), dtype),
            "alpha": np.full(m, float(self.alpha0), dtype),
            "m": np.zeros_like(theta0),
            "v": np.zeros_like(theta0),
            "meta_m": np.zeros(m, dtype),
            "meta_v": np.zeros(m, dtype),
            "Y": Y,
            "X": np.zeros((3 * n, m), dtype),
            "Q": np.zeros((n * m if self.approximation == "full" else 0, m), dtype),
            "delta": np.zeros_like(theta0),
        }

    def dimension(self, s):
        return s.delta.shape[0]  # n; beta has m entries

    # -- curvature ----------------------------------------------------------------------

    def _curvature(self, obs, n):
        """u ↦ ∇²f_t u (exact, its diagonal, or 0) and (u, v) ↦ ∇³f_t[u, v] (exact or 0). (M13)"""
        if self.hessian == "free":
            return (lambda u: np.zeros_like(u)), (lambda u, v: np.zeros_like(u))
        hvp = obs.hvp
        if self.hessian == "diagonal":
            diagonal = np.array([hvp(e)[j] for j, e in enumerate(np.eye(n))])
            return (lambda u: diagonal * u), (lambda u, v: np.zeros_like(u))
        return hvp, obs.third or (lambda u, v: np.zeros_like(u))  # `third` is observed for full only

    # -- F and G ------------------------------------------------------------------------

    def _F(self, s, obs):
        g, n = obs.grad, obs.grad.shape[0]
        w = obs.params if obs.params is not None else np.zeros_like(g)  # only read where κ ≠ 0 (then needed)
        b = self.block_index(n)
        m = s.beta.shape[0]
        t = s.step + 1
        hp, authors = self.hyperparameters, self.convention == "authors_code"
        hess, third = self._curvature(obs, n)
        H, Xm, Xv = s.X[:n], s.X[n : 2 * n], s.X[2 * n :]
        Yb, Ym, Yv = s.Y[:m], s.Y[m : 2 * m], s.Y[2 * m :]
        gamma, identity = self.gamma, np.eye(m, dtype=g.dtype)

        z = H.T @ g  # (M14) eq. (7), (24): the surrogate meta-gradient ∇̂_β F = H_tᵀ∇f_t(w_t)
        meta = meta_cell(self.meta, s.beta, s.meta_m, s.meta_v, z, t, hp, authors)
        beta_for_base = meta.beta if self.order == "meta_first" else s.beta  # (M19) the order option
        step_sizes = sigma(self.sigma, beta_for_base)
        alpha, dalpha, d2alpha = (x[b] for x in step_sizes)
        base = base_cell(self.base, g, s.m, s.v, t, hp, authors)
        delta = -alpha * base.D - self.kappa * alpha * w  # (M3) Δw = −α⊙D − κα⊙w

        # (M15) P = γ[Y; X; Q] + (1 − γ)[I; 0; 0]: what G_t multiplies in eq. (15)
        C = gamma * Yb + (1 - gamma) * identity  # the paper's γB_t (46)
        Pw, Pm, Pv, Pmm, Pmv, Ph = gamma * H, gamma * Xm, gamma * Xv, gamma * Ym, gamma * Yv, gamma * s.Q
        hess_Pw = np.column_stack([hess(Pw[:, i]) for i in range(m)]) if m else Pw
        hess_H = hess_Pw / gamma if gamma else np.column_stack([hess(H[:, i]) for i in range(m)])

        # (M16) meta rows: Y' = ∂y'/∂y P_y + ∂y'/∂z (Hᵀ∇²f P_w + L_t P_h); L_t P_h = Σ_k g_k Q[(i, k), j]
        dz = np.zeros_like(identity)
        if self.approximation != "L":
            dz = hess_H.T @ Pw  # Hᵀ∇²f P_w
            if self.approximation == "full":
                dz = dz + np.einsum("k,ikj->ij", g, Ph.reshape(m, n, m))
        Y_beta = meta.beta_beta[:, None] * C + meta.beta_m[:, None] * Pmm + meta.beta_v[:, None] * Pmv
        Y_beta = Y_beta + meta.beta_z[:, None] * dz
        Y_m = meta.m_m[:, None] * Pmm + meta.m_z[:, None] * dz
        Y_v = meta.v_v[:, None] * Pmv + meta.v_z[:, None] * dz
        if authors:  # the authors' code carries no Y trace: Y ≡ [I; 0; 0], even under meta weight decay
            Y_beta, C = identity, identity

        # (M17) base rows: X' = ∂x'/∂β B + ∂x'/∂x P_x, with B = C (Algorithm 1's order) or Y'^β (meta first)
        B = Y_beta if self.order == "meta_first" else C
        decay = 1 - self.kappa * alpha - alpha * base.D_g * self._hessian_diagonal(hess, n)
        if self.clip_decay:  # IDBD's (1 − α a²)^+ (Sutton 1992), on the diagonal Hessian
            decay = np.maximum(decay, 0.0)
            hess_Pw_term = decay[:, None] * Pw
        else:
            hess_Pw_term = Pw - self.kappa * alpha[:, None] * Pw - (alpha * base.D_g)[:, None] * hess_Pw
        forcing = -(base.D + self.kappa * w) * dalpha  # ∂w'/∂β, entry (j, b(j))
        H_new = forcing[:, None] * B[b] + hess_Pw_term
        H_new = H_new - (alpha * base.D_m)[:, None] * Pm - (alpha * base.D_v)[:, None] * Pv
        Xm_new = base.m_g[:, None] * hess_Pw + base.m_m[:, None] * Pm
        Xv_new = base.v_g[:, None] * hess_Pw + base.v_v[:, None] * Pv

        Q_new = s.Q
        if self.approximation == "full":
            Q_new = self._full_h_rows(
                base,
                alpha,
                dalpha,
                d2alpha,
                b,
                w,
                g,
                C,
                H,
                Xm,
                Xv,
                hess,
                third,
                directions=(C, Pw, Pm, Pv, Ph),
            )
        return MetaOptimizeState(
            step=t,
            beta=meta.beta,
            alpha=step_sizes[0],
            m=base.m,
            v=base.v,
            meta_m=meta.m,
            meta_v=meta.v,
            Y=np.vstack([Y_beta, Y_m, Y_v]),
            X=np.vstack([H_new, Xm_new, Xv_new]),
            Q=Q_new,
            delta=delta,
        )

    def _hessian_diagonal(self, hess, n):
        """diag(∇²f) when the clip of IDBD needs it (diagonal mode); unused otherwise."""
        if not self.clip_decay:
            return np.zeros(n, self.dtype)
        return np.array([hess(e)[j] for j, e in enumerate(np.eye(n, dtype=self.dtype))])

    def _full_h_rows(self, base, alpha, dalpha, d2alpha, b, w, g, C, H, Xm, Xv, hess, third, directions):
        """(M18) Q' = ∂h'/∂(β, w, m, v, h) P: for each column j of P the directional derivative of
        H' = −(D + κw)⊙σ'⊙C[b] + γ(H − κα⊙H − α⊙D_g⊙∇²f H − α⊙D_m⊙X^m − α⊙D_v⊙X^v)
        in the direction (δβ, δw, δm, δv, δH) = P[:, j], the traces C, X^m, X^v held fixed (eq. 48, 64)."""
        P_beta, Pw, Pm, Pv, Ph = directions
        n, m = H.shape
        gamma, kappa = self.gamma, self.kappa
        hess_H = np.column_stack([hess(H[:, i]) for i in range(m)])
        columns = []
        for j in range(m):
            d_beta = P_beta[:, j][b]
            dw, dm, dv = Pw[:, j], Pm[:, j], Pv[:, j]
            dH = Ph[:, j].reshape(m, n).T
            d_alpha, d_dalpha = dalpha * d_beta, d2alpha * d_beta
            dg = hess(dw)
            dD = base.D_g * dg + base.D_m * dm + base.D_v * dv
            dD_g = base.D_gg * dg + base.D_gm * dm + base.D_gv * dv
            dD_m = base.D_gm * dg + base.D_mm * dm + base.D_mv * dv
            dD_v = base.D_gv * dg + base.D_mv * dm + base.D_vv * dv
            dH_new = np.empty_like(H)
            for i in range(m):
                d_hess_H = hess(dH[:, i]) + third(H[:, i], dw)
                dH_new[:, i] = (
                    -(dD + kappa * dw) * dalpha * C[b, i]
                    - (base.D + kappa * w) * d_dalpha * C[b, i]
                    + gamma
                    * (
                        dH[:, i]
                        - kappa * (d_alpha * H[:, i] + alpha * dH[:, i])
                        - d_alpha * base.D_g * hess_H[:, i]
                        - alpha * dD_g * hess_H[:, i]
                        - alpha * base.D_g * d_hess_H
                        - (d_alpha * base.D_m + alpha * dD_m) * Xm[:, i]
                        - (d_alpha * base.D_v + alpha * dD_v) * Xv[:, i]
                    )
                )
            columns.append(dH_new.T.reshape(-1))  # vec: columns of H' stacked
        return np.column_stack(columns)

    def _G(self, s, obs):
        return s.delta  # (M3), computed by F from β_t (or β_{t+1}, meta first) and the old base state


# --------------------------------------------------------------------------- constructors


def _check_blocks(blocks):
    if isinstance(blocks, str):
        if blocks not in ("scalar", "weightwise"):
            raise HyperparameterError("blocks", f"must be 'scalar', 'weightwise' or block ids, got {blocks!r}")
        return blocks
    ids = as_real_array("blocks", blocks, HyperparameterError)
    if ids.ndim != 1 or ids.size == 0 or np.any(ids != np.round(ids)) or ids.min() != 0:
        raise HyperparameterError("blocks", "must be a vector of integer block ids starting at 0, one per weight")
    ids = ids.astype(int)
    missing = sorted(set(range(ids.max() + 1)) - set(ids.tolist()))
    if missing:
        raise HyperparameterError(
            "blocks", f"block ids {missing} are used by no weight: the partition must cover 0…m−1"
        )
    ids.flags.writeable = False
    return ids


def metaoptimize(
    base,
    meta,
    alpha0,
    eta=1e-3,
    gamma=1.0,
    sigma="exponential",
    blocks="scalar",
    approximation="2x2",
    hessian="free",
    clip_decay=False,
    order="base_first",
    convention="paper",
    rho=0.9,
    lam=0.999,
    c=0.9,
    kappa=0.0,
    eps=None,
    meta_rho=0.9,
    meta_lam=0.999,
    meta_c=0.9,
    meta_kappa=0.0,
    meta_eps=None,
):
    """MetaOptimize, spec/metaoptimize.md#metaoptimize (paper 003, Algorithm 1 and eq. 15). ``eps`` and
    ``meta_eps`` default to the convention's: PAPER_EPS, or AUTHORS_CODE_EPS with convention='authors_code'."""
    convention_eps = AUTHORS_CODE_EPS if convention == "authors_code" else PAPER_EPS
    eps = convention_eps if eps is None else eps
    meta_eps = convention_eps if meta_eps is None else meta_eps
    hp = check_hyperparameters(
        "metaoptimize",
        base=base,
        meta=meta,
        alpha0=alpha0,
        eta=eta,
        gamma=gamma,
        sigma=sigma,
        approximation=approximation,
        hessian=hessian,
        order=order,
        convention=convention,
        rho=rho,
        lam=lam,
        c=c,
        kappa=kappa,
        eps=eps,
        meta_rho=meta_rho,
        meta_lam=meta_lam,
        meta_c=meta_c,
        meta_kappa=meta_kappa,
        meta_eps=meta_eps,
    )
    if not isinstance(clip_decay, bool):
        raise HyperparameterError("clip_decay", f"must be True or False, got {clip_decay!r}")
    if clip_decay and hessian != "diagonal":
        raise HyperparameterError("clip_decay", "clips IDBD's diagonal decay factor: it needs hessian='diagonal'")
    if approximation == "full" and hessian == "diagonal":
        raise HyperparameterError("hessian", "the full approximation needs the exact Hessian (or none: 'free')")
    if order == "meta_first" and approximation == "full":
        raise HyperparameterError("order", "meta_first is defined for the 2x2 and L approximations only")
    if convention == "authors_code" and (approximation == "full" or hessian != "free" or order != "base_first"):
        raise HyperparameterError(
            "convention", "the authors' code is the Hessian-free 2x2/L algorithm in Algorithm 1's order"
        )
    needs = {"grad"}
    if kappa != 0:
        needs.add("params")
    if hessian != "free":
        needs.add("hvp")
        if approximation == "full":
            needs.add("third")
    return MetaOptimize(needs=frozenset(needs), blocks=_check_blocks(blocks), clip_decay=clip_decay, **hp)


def algorithm2(alpha0, eta=1e-3, gamma=1.0, approximation="2x2"):
    """Algorithm 2: (SGD, SGD), scalar exponential step size, exact Hessian, eq. (15)'s H update
    (spec/metaoptimize.md, disambiguation 1: the printed H update drops (1 − γ)(Y_t − 1)α∇f)."""
    return metaoptimize("sgd", "sgd", alpha0, eta=eta, gamma=gamma, approximation=approximation, hessian="exact")


def algorithm3(base, meta, alpha0, convention="paper", **hyperparameters):
    """Algorithm 3: the Hessian-free 2×2 family of the paper's experiments (η = 1e-3, γ = 1 by default).
    ``convention="authors_code"`` reproduces the public code, its ε = ε̄ = 1e-10 inside the root included."""
    return metaoptimize(
        base, meta, alpha0, approximation="2x2", hessian="free", convention=convention, **hyperparameters
    )
