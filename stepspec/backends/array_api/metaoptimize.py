"""MetaOptimize on the array API, spec/metaoptimize.md (tags M1–M19), on parameter structures; written from the
spec page and the torch backend's design, the NumPy reference is not called.

State. Per weight (one array per parameter): m, v, δ; per step-size block (one array, ``WHOLE``): β, α, m̄, v̄
(m,). The traces X = [H; X^m; X^v] (3n × m), Q (nm × m, full only) and Y (3m × m) are kept in one of two forms
(spec/backends.md#metaoptimize, as the torch backend keeps them), by ``hessian``:

- **row-sparse** (free or diagonal): ∂x'/∂x is then diagonal, so from Y_0 = [I; 0; 0], X_0 = 0, Q_0 = 0 Y's
  three blocks stay diagonal, row j of H, X^m, X^v is non-zero only in column b(j), and Q[(i, j), c] only at
  i = c = b(j). Stored: X as three lists of weight-shaped arrays h, x^m, x^v (``_RowSparse``), Q as one, q, Y
  as its three diagonals (``_DiagonalBlocks``): O(n) entries and work per step whatever m — 14n with
  weight-wise step sizes and full. The flat spec view is built when read (n·m entries per part); an ``init``
  override off the pattern is a ``StateError`` naming the field (no run reaches it, this form cannot hold it).
- **dense** (exact: ∇²f couples the columns): X as ``Columns(3)`` (one array (m, *shape) per parameter and
  block, the m columns of each weight contiguous), Q as one array (m, m, *shape) per parameter, entry [i, j]
  column i of H differentiated along column j of P, Y as a (3m, m) array: O(n·m).

One step:

1. the curvature products (M13) the configuration reads: ∇²f H column by column (exact; and for full the m²
   products ∇²f(γQ[i, j]) + ∇³f[H_i, γH_j]), or diag ∇²f from n products with the basis vectors (diagonal,
   ``idbd.hessian_diagonal``);
2. **one reduction round** (γ scales the sums): dense, per parameter z = Hᵀg (M14) and, for 2x2 and full, the
   m × m (∇²f H)ᵀH, and for full gᵀQ, concatenated and combined by one ``reduce_sum``; row-sparse, each sum
   over a row has one term, so these are block sums Σ_{b(j)=i} of h g, a h² (diagonal a) and q g (``_Blocks.
   sums``) — one inner product per pair for scalar step sizes, no reduction weight-wise, and for block ids
   per-parameter segment sums (prefix sums over the weights sorted by block, differenced at the blocks' ends:
   ``take`` and ``cumulative_sum``, the array API having no scatter-add);
3. the meta update (M9)–(M12) and the Y rows (M15)–(M16) on m-vectors and m × m matrices (row-sparse:
   m-vectors only), on the device: every meta partial is entrywise, so Y' is rows of Y's blocks scaled by
   m-vectors — no linear algebra, nothing a host copy would make cheaper, and no synchronisation;
4. per parameter, α and B (C, or Y'^β meta first) at its weights (``take`` by block id; dense: B's rows), then
   the fused elementwise work (``_pass_step``, one base cell per pass) in three parts: the weights (m', v',
   Δw (M3), and θ + Δw in ``step``), the traces (H', X^m', X^v' (M17), all stored columns at once) and, with
   full, Q' (M18).

Passes per parameter per step: one in the row-sparse form and in the dense one with m = 1 (every operand has
the weights' shape, every part runs in the same kernel, each array read and written once), otherwise one per
output shape — two, three with full. One reduction round (none row-sparse with weight-wise step sizes). No
host read beyond the core's finite checks of the observation and of each curvature product (none
Hessian-free; n per step with the diagonal Hessian, m with the exact one, m + 2m² with full).

Float32 (the torch backend's decisions): every hyperparameter-derived constant — 1 − ρ, 1 − λ, 1 − c, 1 − γ,
1 − ηκ̄, the bias corrections 1 − ρᵗ, 1 − λᵗ and their quotients, the authors' μ — is computed on the host in
float64 and rounded once, where it meets an array (a Python float in an operator; under cupy a scalar of the
working dtype, so the kernel computes in float32 throughout; ``test_float32_constants_are_derived_in_float64``).
The one wider array: block ids' segment sums accumulate their prefix sums in float64, since a difference of
prefix sums cancels the blocks before it (``test_block_sums_of_a_small_block_after_a_large_one_keep_their_
digits_in_float32``). The normaliser's s-partials are the reference's products, so they leave float32's range
where the reference's do (spec/metaoptimize.md#float32).
"""

from __future__ import annotations

import functools
import math
import operator
from typing import NamedTuple

import numpy as np

from ...errors import HyperparameterError, StateError
from .. import _hyperparameters as checked
from .. import _metaoptimize_host as host
from ._core import COUNTER, PARAM, WHOLE, Columns, Layout, Optimizer, as_arrays
from .idbd import hessian_diagonal

# --------------------------------------------------------------------------- structural zeros


class _Zero:
    """A partial derivative this configuration does not have (∂D/∂v of SGD, the Hessian term of a Hessian-free
    run): it absorbs products and drops out of sums, so that no pass computes it."""

    __slots__ = ()

    def __mul__(self, other):
        return self

    __rmul__ = __truediv__ = __mul__

    def __add__(self, other):
        return other

    __radd__ = __rsub__ = __add__

    def __sub__(self, other):
        return -other

    def __neg__(self):
        return self


ZERO = _Zero()


class _Term:
    """An array in the algebra of the cells: its operators defer to ZERO (an array's own operators reject
    foreign operands) and accept numbers and other terms; ``_call`` applies an ``xp`` function. Python-level
    only, so the same code runs inside a fused pass and on m-vectors."""

    __slots__ = ("x",)
    __array_ufunc__ = None  # a NumPy scalar or array on the left defers to the term's reflected operator

    def __init__(self, x):
        self.x = x

    def _binary(self, other, function):
        if other is ZERO:
            return NotImplemented
        return _Term(function(self.x, other.x if isinstance(other, _Term) else other))

    def __add__(self, other):
        return self._binary(other, operator.add)

    def __radd__(self, other):
        return self._binary(other, lambda a, b: b + a)

    def __sub__(self, other):
        return self._binary(other, operator.sub)

    def __rsub__(self, other):
        return self._binary(other, lambda a, b: b - a)

    def __mul__(self, other):
        return self._binary(other, operator.mul)

    def __rmul__(self, other):
        return self._binary(other, lambda a, b: b * a)

    def __truediv__(self, other):
        return self._binary(other, operator.truediv)

    def __rtruediv__(self, other):
        return self._binary(other, lambda a, b: b / a)

    def __gt__(self, other):
        return self._binary(other, operator.gt)

    def __pow__(self, exponent):
        return _Term(self.x**exponent)

    def __neg__(self):
        return _Term(-self.x)


def _call(function, *args):
    """``function`` (an ``xp`` function) of terms and numbers, as a term."""
    return _Term(function(*(_bare(a) for a in args)))


def _bare(x):
    """A term's array (numbers and ZERO as they are)."""
    return x.x if isinstance(x, _Term) else x


# --------------------------------------------------------------------------- the normaliser (M2)


class _Normalised:
    """N(a, s) = a/(√s + ε) (ε outside the root) or a/√(s + ε) (inside, the authors' code), and its partials
    N_a, N_s, N_as, N_ss (N_aa = 0), each formed when first read. Where s = 0 (a weight that never saw a
    gradient, so a = 0) N = 0 and the s-partials, unbounded there, are 0. Operators, ``sqrt`` and ``where``
    only: it runs inside fused passes and on m-vectors."""

    def __init__(self, xp, a, s, eps, inside: bool):
        self.xp, self._a, self.inside = xp, a, inside
        if inside:
            self._root = _call(xp.sqrt, s + eps)
            self.value = a / self._root
        else:
            self._r = _call(xp.sqrt, s)
            self._q = self._r + eps
            self.value = a / self._q

    def _where_positive(self, numerator, denominator):
        """numerator/denominator where r > 0, else 0; the denominator is replaced where r = 0, so that no
        0/0 is formed (a NumPy-emulated kernel would warn)."""
        positive = self._r > 0
        return _call(self.xp.where, positive, numerator / _call(self.xp.where, positive, denominator, 1.0), 0.0)

    @functools.cached_property
    def a(self):
        return 1.0 / (self._root if self.inside else self._q)

    @functools.cached_property
    def s(self):
        if self.inside:
            return -self._a / (2.0 * self._root**3)
        return self._where_positive(-self._a, 2.0 * self._r * self._q**2)

    @functools.cached_property
    def as_(self):
        if self.inside:
            return -1.0 / (2.0 * self._root**3)
        return self._where_positive(-1.0, 2.0 * self._r * self._q**2)

    @functools.cached_property
    def ss(self):
        if self.inside:
            return 3.0 * self._a / (4.0 * self._root**5)
        r, q = self._r, self._q
        return self._where_positive(self._a * (q + 2.0 * r), 4.0 * r**3 * q**3)


# --------------------------------------------------------------------------- base cells (M3)–(M8)


class _BaseCell:
    """One base update, entrywise: the new m, v, the direction D of Δw = −α⊙D − κα⊙w (M3), and the partials the
    traces read (∂m'/∂v = ∂v'/∂m = 0 for every base); constants are numbers, absent ones ZERO."""

    m_g = v_g = ZERO
    m_m = v_v = 1.0
    D_g = D_m = D_v = D_gg = D_gm = D_gv = D_mm = D_mv = D_vv = ZERO

    def __init__(self, m, v, D, **partials):
        self.m, self.v, self.D = m, v, D
        self.__dict__.update(partials)


class _NormalisedCell(_BaseCell):
    """D = N(a(g, m), s(g, v)), a linear and s quadratic in g: the chain rule to (g, m, v)
    (spec/metaoptimize.md, derivation of the blocks); each partial formed when the pass reads it."""

    def __init__(self, m, v, N: _Normalised, a_g, a_m, s_g, s_v, s_gg, **partials):
        super().__init__(m, v, N.value, **partials)
        self.N, self.a_g, self.a_m, self.s_g, self.s_v, self.s_gg = N, a_g, a_m, s_g, s_v, s_gg

    @functools.cached_property
    def D_g(self):
        return self.N.a * self.a_g + self.N.s * self.s_g

    @functools.cached_property
    def D_m(self):
        return self.N.a * self.a_m

    @functools.cached_property
    def D_v(self):
        return self.N.s * self.s_v

    @functools.cached_property
    def D_gg(self):
        N = self.N
        return N.ss * self.s_g**2 + 2.0 * N.as_ * self.a_g * self.s_g + N.s * self.s_gg

    @functools.cached_property
    def D_gm(self):
        return self.N.as_ * self.a_m * self.s_g

    @functools.cached_property
    def D_gv(self):
        return self.N.ss * self.s_g * self.s_v + self.N.as_ * self.a_g * self.s_v

    @functools.cached_property
    def D_mv(self):
        return self.N.as_ * self.a_m * self.s_v

    @functools.cached_property
    def D_vv(self):
        return self.N.ss * self.s_v**2


BASE_CONSTANTS = (
    *("kappa", "gamma", "rho", "one_minus_rho", "lam", "one_minus_lam", "two_one_minus_lam", "one_minus_c", "c"),
    *("eps", "bias1", "bias2", "one_minus_rho_bias1", "rho_bias1", "lam_bias2", "two_one_minus_lam_bias2"),
    *("mu", "two_mu", "mu_lam"),
)
"""The host constants a fused pass receives, in order: derived in float64 on the host (``_base_constants``)."""


def _base_cell(xp, name: str, authors: bool, g, m, v, k: dict) -> _BaseCell:
    """(M4)–(M8) for base ``name`` on one parameter; ``k`` the host constants of ``BASE_CONSTANTS``."""
    rho, lam = k["rho"], k["lam"]
    if name == "sgd":  # (M4) D = g
        return _BaseCell(m, v, g, D_g=1.0)
    momentum = {"m_g": k["one_minus_rho"], "m_m": rho}
    if name == "sgdm":  # (M5) m' = ρm + (1 − ρ)g, D = m' (the authors' code: the old m)
        new_m = rho * m + k["one_minus_rho"] * g
        if authors:
            return _BaseCell(new_m, v, m, D_m=1.0, **momentum)
        return _BaseCell(new_m, v, new_m, D_g=k["one_minus_rho"], D_m=rho, **momentum)
    if name == "lion":  # (M7) D = sign(c m + (1 − c) g) with the old m; m' = ρm + (1 − ρ)g
        new_m = rho * m + k["one_minus_rho"] * g
        return _BaseCell(new_m, v, _call(xp.sign, k["c"] * m + k["one_minus_c"] * g), **momentum)
    if authors:  # un-normalised sums, bias-corrected v, ε inside the root (spec: the authors' code)
        new_v = lam * v + g * g
        second = {"s_g": k["two_mu"] * g, "s_v": k["mu_lam"], "s_gg": k["two_mu"], "v_g": 2.0 * g, "v_v": lam}
        if name == "rmsprop":
            N = _Normalised(xp, g, k["mu"] * new_v, k["eps"], True)
            return _NormalisedCell(m, new_v, N, 1.0, ZERO, **second)
        new_m = rho * m + g
        N = _Normalised(xp, new_m, k["mu"] * new_v, k["eps"], True)
        return _NormalisedCell(new_m, new_v, N, 1.0, rho, m_g=1.0, m_m=rho, **second)
    new_v = lam * v + k["one_minus_lam"] * (g * g)  # v' = λv + (1 − λ)g²
    v_g = k["two_one_minus_lam"] * g
    if name == "rmsprop":  # (M6) D = g/(√v' + ε)
        N = _Normalised(xp, g, new_v, k["eps"], False)
        return _NormalisedCell(m, new_v, N, 1.0, ZERO, v_g, lam, k["two_one_minus_lam"], v_g=v_g, v_v=lam)
    new_m = rho * m + k["one_minus_rho"] * g  # (M8) adamw: D = m̂/(√v̂ + ε), m̂ = m'/(1 − ρᵗ), v̂ = v'/(1 − λᵗ)
    N = _Normalised(xp, new_m / k["bias1"], new_v / k["bias2"], k["eps"], False)
    return _NormalisedCell(
        new_m,
        new_v,
        N,
        k["one_minus_rho_bias1"],
        k["rho_bias1"],
        v_g / k["bias2"],
        k["lam_bias2"],
        k["two_one_minus_lam_bias2"],
        v_g=v_g,
        v_v=lam,
        **momentum,
    )


_UPDATES_M = {"sgdm", "lion", "adamw"}
_UPDATES_V = {"rmsprop", "adamw"}
"""The bases whose update changes m, v (the others leave them as they are, 0 from S_0)."""


# --------------------------------------------------------------------------- meta cells (M9)–(M12)


class _MetaCell:
    """One meta update, entrywise over the m blocks, from z = Hᵀg: β' = (1 − ηκ̄)β − ηU (M9), the new m̄, v̄,
    and the partials the Y rows read; constants are numbers, absent ones ZERO."""

    beta_z = beta_m = beta_v = m_z = v_z = ZERO
    m_m = v_v = 1.0

    def __init__(self, beta, m, v, beta_beta, **partials):
        self.beta, self.m, self.v, self.beta_beta = beta, m, v, beta_beta
        self.__dict__.update(partials)


def _meta_cell(xp, name: str, authors: bool, beta, m, v, z, t: int, hp: dict) -> _MetaCell:
    """(M9)–(M12) on m-vectors; every constant a Python float derived in float64."""
    eta, rho, lam, c, eps = hp["eta"], hp["meta_rho"], hp["meta_lam"], hp["meta_c"], hp["meta_eps"]
    if name == "fixed":  # β' = β: no step and no decay (the authors' code's `fixed`)
        return _MetaCell(beta, m, v, 1.0)
    shrink = 1.0 - eta * hp["meta_kappa"]  # meta weight decay κ̄, the authors' code's form
    if name == "sgd":  # (M10) U = z
        return _MetaCell(shrink * beta - eta * z, m, v, shrink, beta_z=-eta)
    if name == "lion":  # (M12) U = sign(c̄ m̄ + (1 − c̄) z) with the old m̄; m̄' = ρ̄m̄ + (1 − ρ̄)z
        step = _call(xp.sign, c * m + (1.0 - c) * z)
        new_m = rho * m + (1.0 - rho) * z
        return _MetaCell(shrink * beta - eta * step, new_m, v, shrink, m_m=rho, m_z=1.0 - rho)
    # (M11) adam / rmsprop with the moments that include z (disambiguation 8); rmsprop: U = z/(√v̄' + ε̄), m̄ stays
    if authors:
        mu = (1.0 - lam) / (1.0 - lam**t)
        new_v, v_z = lam * v + z * z, 2.0 * z
        s, s_z, s_v = mu * new_v, (2.0 * mu) * z, mu * lam
        new_m, m_z = rho * m + z, 1.0
        a, a_z, a_m = new_m, 1.0, rho
    else:
        new_v, v_z = lam * v + (1.0 - lam) * (z * z), (2.0 * (1.0 - lam)) * z
        s, s_z, s_v = new_v, v_z, lam
        if name == "adam":  # bias-corrected: m̂/(√v̂ + ε̄)
            b1, b2 = 1.0 - rho**t, 1.0 - lam**t
            new_m, m_z = rho * m + (1.0 - rho) * z, 1.0 - rho
            a, a_z, a_m = new_m / b1, (1.0 - rho) / b1, rho / b1
            s, s_z, s_v = s / b2, s_z / b2, s_v / b2
    if name == "rmsprop":
        a, a_z, a_m, new_m, m_z = z, 1.0, ZERO, m, ZERO
    N = _Normalised(xp, a, s, eps, authors)
    return _MetaCell(
        shrink * beta - eta * N.value,
        new_m,
        new_v,
        shrink,
        beta_z=-eta * (N.a * a_z + N.s * s_z),
        beta_m=-eta * N.a * a_m,
        beta_v=-eta * N.s * s_v,
        m_m=rho if name == "adam" else 1.0,
        m_z=m_z,
        v_v=lam,
        v_z=v_z,
    )


def _dense_rows(x):
    """A meta partial (an m-vector) as the factor that scales the rows of an m × m block."""
    return _Term(x.x[:, None]) if isinstance(x, _Term) else x


def _diagonal_rows(x):
    """The same for a block stored by its diagonal (the row-sparse form): entrywise."""
    return x


def _meta_rows(meta: _MetaCell, Yb, Ym, Yv, identity, dz, gamma: float, authors: bool, rows):
    """(M15)–(M16) Y' = ∂y'/∂y P_y + ∂y'/∂z dz with P = γ[Y; X; Q] + (1 − γ)[I; 0; 0] and dz = Hᵀ∇²f P_w
    (+ L_t P_h); ``rows`` (``_dense_rows`` or ``_diagonal_rows``, the blocks' form) makes a meta partial (an
    m-vector) scale the rows of a block. Returns (Y'^β, Y'^m̄, Y'^v̄, C), C = γY^β + (1 − γ)I."""
    C = gamma * Yb + (1.0 - gamma) * identity
    Pmm, Pmv = gamma * Ym, gamma * Yv
    Y_beta = rows(meta.beta_beta) * C + rows(meta.beta_m) * Pmm + rows(meta.beta_v) * Pmv + rows(meta.beta_z) * dz
    Y_m = rows(meta.m_m) * Pmm + rows(meta.m_z) * dz
    Y_v = rows(meta.v_v) * Pmv + rows(meta.v_z) * dz
    if authors:  # the authors' code carries no Y trace: Y ≡ [I; 0; 0], even under meta weight decay
        return identity, Y_m, Y_v, identity
    return Y_beta, Y_m, Y_v, C


# --------------------------------------------------------------------------- the rows of H' and Q' (M17)–(M18)


def _h_row(base: _BaseCell, alpha, kappa, forced, Pw, Pm, Pv, hess_Pw, decay):
    """(M17) H' = ∂w'/∂β B + ∂w'/∂(w, m, v) P; ``forced`` the ∂w'/∂β B part, ``decay`` IDBD's clipped diagonal
    of ∂w'/∂w (None without clip_decay)."""
    through_w = decay * Pw if decay is not None else Pw - kappa * alpha * Pw - alpha * base.D_g * hess_Pw
    return forced + through_w - alpha * base.D_m * Pm - alpha * base.D_v * Pv


class _Direction:
    """The first-order change of the base cell along a column of P (δβ as C[b, j], δw, δm, δv), for (M18)."""

    def __init__(self, base: _BaseCell, dalpha, d2alpha, d_beta, dw, dm, dv, dg):
        self.d_alpha, self.d_dalpha, self.dw = dalpha * d_beta, d2alpha * d_beta, dw
        self.dD = base.D_g * dg + base.D_m * dm + base.D_v * dv
        self.dD_g = base.D_gg * dg + base.D_gm * dm + base.D_gv * dv
        self.dD_m = base.D_gm * dg + base.D_mm * dm + base.D_mv * dv
        self.dD_v = base.D_gv * dg + base.D_mv * dm + base.D_vv * dv


def _q_entry(base, alpha, dalpha, kappa, w, gamma, d: _Direction, C_i, H_i, Xm_i, Xv_i, hess_H_i, dH_i, d_hess_H_i):
    """(M18) the directional derivative along d of column i of H' = −(D + κw)⊙σ'⊙C[b] + γ(H − κα⊙H
    − α⊙D_g⊙∇²f H − α⊙D_m⊙X^m − α⊙D_v⊙X^v), C, X^m, X^v held fixed (eq. 48, 64)."""
    return (
        -(d.dD + kappa * d.dw) * dalpha * C_i
        - (base.D + kappa * w) * d.d_dalpha * C_i
        + gamma
        * (
            dH_i
            - kappa * (d.d_alpha * H_i + alpha * dH_i)
            - d.d_alpha * base.D_g * hess_H_i
            - alpha * d.dD_g * hess_H_i
            - alpha * base.D_g * d_hess_H_i
            - (d.d_alpha * base.D_m + alpha * d.dD_m) * Xm_i
            - (d.d_alpha * base.D_v + alpha * d.dD_v) * Xv_i
        )
    )


# --------------------------------------------------------------------------- the fused passes


class _Program(NamedTuple):
    """What selects a pass's code (everything else is an argument): a configuration of the optimizer."""

    base: str
    authors: bool
    exponential: bool  # σ = exp: σ' = σ'' = α; identity: σ' = 1, σ'' = 0
    decayed: bool  # κ ≠ 0: w is read
    hessian: str
    clip: bool


def _sigma_partials(program: _Program, alpha):
    """(σ', σ'') at the weights (M1)."""
    return (alpha, alpha) if program.exponential else (1.0, ZERO)


def _weights(xp, program: _Program, base: _BaseCell, w, alpha, k: dict, operands) -> list:
    """(M3) and the base update: m', v' where the base changes them, Δw, and θ + Δw when θ is an operand."""
    delta = -alpha * base.D - k["kappa"] * alpha * w
    out = [base.m] if program.base in _UPDATES_M else []
    out += [base.v] if program.base in _UPDATES_V else []
    out.append(delta)
    if operands:
        out.append(_Term(operands[0]) + delta)
    return out


def _traces(xp, program: _Program, base: _BaseCell, w, alpha, k: dict, operands) -> list:
    """(M17) H', X^m', X^v', all m columns at once: operands B's rows at the weights, H, X^m, X^v, and ∇²f H
    (exact) or diag ∇²f (diagonal); per-weight operands broadcast against the columns."""
    B, H, Xm, Xv = (_Term(x) for x in operands[:4])
    gamma, kappa = k["gamma"], k["kappa"]
    dalpha, _ = _sigma_partials(program, alpha)
    Pw, Pm, Pv = gamma * H, gamma * Xm, gamma * Xv
    hess_Pw, decay = ZERO, None
    if program.hessian == "exact":
        hess_Pw = gamma * _Term(operands[4])
    elif program.hessian == "diagonal":
        diagonal = _Term(operands[4])
        hess_Pw = diagonal * Pw
        if program.clip:  # IDBD's (1 − α a²)⁺ on the diagonal of ∂w'/∂w (1 where the base has no ∂D/∂g)
            diagonal_of_w = 1.0 - kappa * alpha - alpha * base.D_g * diagonal
            decay = _call(xp.maximum, diagonal_of_w, 0.0) if isinstance(diagonal_of_w, _Term) else diagonal_of_w
    forced = -(base.D + kappa * w) * dalpha * B  # ∂w'/∂β B, entry (j, b(j)) of ∂w'/∂β
    new_h = _h_row(base, alpha, kappa, forced, Pw, Pm, Pv, hess_Pw, decay)
    return [new_h, base.m_g * hess_Pw + base.m_m * Pm, base.v_g * hess_Pw + base.v_v * Pv]


def _q(xp, program: _Program, base: _BaseCell, w, alpha, k: dict, operands) -> list:
    """(M18) Q', axis 0 the column i of H, axis 1 the direction j (column j of P): operands C[b, ·], H, X^m,
    X^v each at axis 0 and at axis 1, Q, and (exact) ∇²f H at both axes and ∇²f(γQ) + ∇³f[H_i, γH_j]."""
    C_i, C_j, H_i, H_j, Xm_i, Xm_j, Xv_i, Xv_j, Q = (_Term(x) for x in operands[:9])
    hess_H_i = hess_H_j = d_hess = ZERO
    if program.hessian == "exact":
        hess_H_i, hess_H_j, d_hess = (_Term(x) for x in operands[9:12])
    gamma, kappa = k["gamma"], k["kappa"]
    dalpha, d2alpha = _sigma_partials(program, alpha)
    d = _Direction(base, dalpha, d2alpha, C_j, gamma * H_j, gamma * Xm_j, gamma * Xv_j, gamma * hess_H_j)
    return [_q_entry(base, alpha, dalpha, kappa, w, gamma, d, C_i, H_i, Xm_i, Xv_i, hess_H_i, gamma * Q, d_hess)]


_PARTS = {"weights": _weights, "traces": _traces, "q": _q}


def _operand_count(program: _Program, part: str, with_theta: bool) -> int:
    if part == "weights":
        return int(with_theta)
    if part == "traces":
        return 4 + (program.hessian != "free")
    return 9 + 3 * (program.hessian == "exact")


@functools.cache
def _pass_step(program: _Program, parts: tuple, with_theta: bool):
    """The elementwise pass of ``program`` computing ``parts`` (of ``_PARTS``) for one parameter, from one base
    cell: arguments g, m, v, [w], α, then each part's operands in order, then the host constants
    (``BASE_CONSTANTS``); returns the parts' results in order."""

    def make(xp):
        def step(*args):
            lead = 5 if program.decayed else 4
            operands, position = {}, lead
            for part in parts:
                count = _operand_count(program, part, with_theta)
                operands[part], position = args[position : position + count], position + count
            k = {name: _Term(value) for name, value in zip(BASE_CONSTANTS, args[position:])}  # cupy: its scalars
            g, m, v = (_Term(x) for x in args[:3])
            w, k["kappa"] = (_Term(args[3]), k["kappa"]) if program.decayed else (ZERO, ZERO)
            alpha = _Term(args[lead - 1])
            base = _base_cell(xp, program.base, program.authors, g, m, v, k)
            out = []
            for part in parts:
                out += _PARTS[part](xp, program, base, w, alpha, k, operands[part])
            return tuple(_bare(x) for x in out)

        return step

    return make


# --------------------------------------------------------------------------- layouts and blocks


class _ColumnsOfH(Layout):
    """Q (nm × m): one array (m, m, *shape) per parameter, entry [i, j] the weight's row of block i (column i
    of H, vec(H) stacking the columns) in column j."""

    def flat(self, stored, structure):
        xp = structure.ns.xp
        m = stored[0].shape[0] if stored else 0
        if not structure.n:
            return structure.ns.zeros((0, m))
        per_block = xp.concat([xp.reshape(leaf, (m, m, -1)) for leaf in stored], axis=2)  # (i, j, n)
        return xp.reshape(xp.permute_dims(per_block, (0, 2, 1)), (m * structure.n, m))

    def store(self, name, value, structure, default):
        xp = structure.ns.xp
        m = default[0].shape[0] if default else 0
        (flat,), _ = as_arrays(name, [value], StateError, structure.ns)
        if tuple(flat.shape) != (m * structure.n, m):
            raise StateError(name, f"must have shape {(m * structure.n, m)}, got {tuple(flat.shape)}")
        blocks = xp.reshape(flat, (m, structure.n, m))  # (i, n, j)
        offsets = np.cumsum([0, *structure.sizes])
        return [
            xp.reshape(xp.permute_dims(blocks[:, a:b, :], (0, 2, 1)), (m, m, *s))
            for a, b, s in zip(offsets, offsets[1:], structure.shapes)
        ]


class _Blocks:
    """b(j) over a structure: m, per parameter its weights' block ids (device integers; None for scalar step
    sizes, whose one entry broadcasts), and the sums over each block (``sums``)."""

    def __init__(self, blocks, structure):
        n, ns = structure.n, structure.ns
        self.structure, self.kind = structure, blocks if isinstance(blocks, str) else "ids"
        self.scalar = self.kind == "scalar"
        if isinstance(blocks, str):
            self.m = 1 if self.scalar else n
            ids = np.zeros(n, np.int64) if self.scalar else np.arange(n)
        else:
            if blocks.shape != (n,):
                raise HyperparameterError(
                    "blocks", f"assigns {blocks.shape[0]} weights to blocks, but the parameters have n = {n}"
                )
            self.m, ids = int(blocks.max()) + 1, blocks
        self.host_ids = ids
        offsets = np.cumsum([0, *structure.sizes])
        self.ids = [None if self.scalar else ns.asarray(ids[a:b]) for a, b in zip(offsets, offsets[1:])]
        self._segments = [self._segment(ids[a:b]) for a, b in zip(offsets, offsets[1:])] if self.kind == "ids" else []

    def _segment(self, leaf_ids):
        """One parameter's weights sorted by block (a stable order) and, per block i, the range [lower_i,
        upper_i) of its weights in that order: its share of every block sum is a difference of prefix sums."""
        order = np.argsort(leaf_ids, kind="stable")
        blocks, ns = np.arange(self.m), self.structure.ns
        ranks = leaf_ids[order]
        lower, upper = np.searchsorted(ranks, blocks, "left"), np.searchsorted(ranks, blocks, "right")
        return ns.asarray(order), ns.asarray(lower.astype(np.int64)), ns.asarray(upper.astype(np.int64))

    def at(self, vector, k: int):
        """An m-vector at parameter k's weights (entry b(j) at weight j); numbers and ZERO pass through."""
        if not hasattr(vector, "shape"):
            return vector
        xp, shape = self.structure.ns.xp, self.structure.shapes[k]
        if self.scalar:
            return xp.reshape(vector, ())
        return xp.reshape(xp.take(vector, self.ids[k]), shape)

    def rows_at(self, matrix, k: int):
        """The rows of an m × m matrix at parameter k's weights, the m columns leading: (m, *shape); for scalar
        step sizes its one entry, 0-d."""
        xp, shape = self.structure.ns.xp, self.structure.shapes[k]
        if self.scalar:
            return xp.reshape(matrix, ())
        return xp.reshape(xp.matrix_transpose(xp.take(matrix, self.ids[k], axis=0)), (self.m, *shape))

    def sums(self, pairs: list) -> list:
        """For each pair (x, y) of lists of per-weight arrays, the m-vector Σ_{j: b(j) = i} x_j y_j: one
        reduction round for all pairs — an inner product with scalar step sizes, none weight-wise (each sum
        has one term), per-parameter segment sums by block id otherwise."""
        ns, xp, m, structure = self.structure.ns, self.structure.ns.xp, self.m, self.structure
        if not structure.n:
            return [ns.zeros((m,)) for _ in pairs]
        if self.kind == "weightwise":
            return [structure.join([a * b for a, b in zip(x, y)]) for x, y in pairs]
        if self.scalar:
            partials = [xp.stack(column) for column in zip(*(ns.dots(x, y) for x, y in pairs))]
            return [xp.reshape(total, (1,)) for total in _unstacked(ns.reduce_sum(partials), len(pairs))]
        partials = [
            xp.concat([self._segment_sums(x[k] * y[k], k) for x, y in pairs]) for k in range(len(structure.shapes))
        ]
        return _unstacked(xp.reshape(ns.reduce_sum(partials), (len(pairs), m)), len(pairs))

    def _segment_sums(self, values, k: int):
        """Parameter k's share of every block sum of ``values`` (m,): differences of prefix sums in the order
        of ``_segment``, accumulated in float64 (a difference of two prefix sums cancels what the blocks
        before share, so the working float32 would lose the digits of a small block after a large one)."""
        xp, working = self.structure.ns.xp, self.structure.ns.float
        order, lower, upper = self._segments[k]
        ordered = xp.astype(xp.take(xp.reshape(values, (-1,)), order), xp.float64)
        prefix = xp.cumulative_sum(ordered, include_initial=True)
        return xp.astype(xp.take(prefix, upper) - xp.take(prefix, lower), working)

    @functools.cached_property
    def flat_ids(self):
        """b as one (n,) device integer array (for the spec's flat view of the row-sparse traces)."""
        return self.structure.ns.asarray(self.host_ids.astype(np.int64))


def _unstacked(array, count: int) -> list:
    """The ``count`` entries of ``array`` along its first axis (a strict array is not iterable)."""
    return [array[i, ...] for i in range(count)]


class _RowSparse(Layout):
    """A trace stored by its entries in column b(j) of weight j's rows, zero elsewhere (the row-sparse form):
    X (3n × m, row j of block r at r·n + j) as three lists of per-parameter arrays h, x^m, x^v, or Q (nm × m,
    its entry at row b(j)·n + j, column b(j)) as one list q."""

    def __init__(self, blocks_of, parts: int, vec_of_h: bool = False):
        self.blocks_of, self.parts, self.vec_of_h = blocks_of, parts, vec_of_h

    def _pattern(self, structure):
        """(b as (n,) ids, m, the flat shape, the mask of the stored entries in one part's (blocks, n, m) view)."""
        blocks = self.blocks_of(structure)
        xp, n, m, ids = structure.ns.xp, structure.n, blocks.m, blocks.flat_ids
        columns = xp.arange(m, dtype=ids.dtype, device=structure.ns.device)
        at_own_column = ids[None, :, None] == columns[None, None, :]
        if self.vec_of_h:  # Q[(i, j), c] stored at i = c = b(j)
            return ids, m, (m * n, m), at_own_column & (columns[:, None, None] == ids[None, :, None])
        return ids, m, (self.parts * n, m), at_own_column

    def flat(self, stored, structure):
        xp = structure.ns.xp
        _, _, shape, mask = self._pattern(structure)
        if not structure.n:
            return structure.ns.zeros(shape)
        parts = [xp.where(mask, xp.reshape(structure.join(part), (1, -1, 1)), 0.0) for part in stored]
        return xp.reshape(xp.concat(parts), shape)

    def store(self, name, value, structure, default):
        xp = structure.ns.xp
        ids, m, shape, mask = self._pattern(structure)
        (flat,), _ = as_arrays(name, [value], StateError, structure.ns)
        if tuple(flat.shape) != shape:
            raise StateError(name, f"must have shape {shape}, got {tuple(flat.shape)}")
        if not structure.n:
            return [structure.zeros() for _ in range(self.parts)]
        view = xp.reshape(flat, (-1, structure.n, m))  # (parts, n, m) or (m, n, m)
        if bool(xp.any(xp.where(mask, 0.0, view) != 0)):
            raise host.off_row_sparse_pattern(name, "array-API")
        at_column = xp.take_along_axis(
            view, xp.broadcast_to(ids[None, :, None], (view.shape[0], structure.n, 1)), axis=2
        )
        if self.vec_of_h:  # then the row block b(j)
            entries = [xp.take_along_axis(xp.permute_dims(at_column, (1, 0, 2)), ids[:, None, None], axis=1)]
        else:
            entries = [at_column[r, ...] for r in range(self.parts)]
        return [structure.split(xp.reshape(e, (-1,))) for e in entries]


class _DiagonalBlocks(Layout):
    """Y = [Y^β; Y^m̄; Y^v̄] (3m × m) stored as the diagonals of its three blocks (the row-sparse form): three
    m-vectors."""

    @staticmethod
    def _eye(xp, m, ns):
        columns = xp.arange(m, device=ns.device)
        return columns[:, None] == columns[None, :]

    def flat(self, stored, structure):
        xp, ns = structure.ns.xp, structure.ns
        eye = self._eye(xp, stored[0].shape[0], ns)
        return xp.concat([xp.where(eye, d[None, :], 0.0) for d in stored])

    def store(self, name, value, structure, default):
        xp, ns = structure.ns.xp, structure.ns
        m = default[0].shape[0]
        (flat,), _ = as_arrays(name, [value], StateError, ns)
        if tuple(flat.shape) != (3 * m, m):
            raise StateError(name, f"must have shape {(3 * m, m)}, got {tuple(flat.shape)}")
        blocks = xp.reshape(flat, (3, m, m))
        if bool(xp.any(xp.where(self._eye(xp, m, ns), 0.0, blocks) != 0)):
            raise host.off_diagonal_blocks(name)
        diagonals = xp.linalg.diagonal(blocks)
        return [diagonals[r, ...] for r in range(3)]


# --------------------------------------------------------------------------- the optimizer


class MetaOptimize(Optimizer):
    """(F, G) of spec/metaoptimize.md on parameter structures; F computes Δw (M3) and stores it as ``delta``, G
    returns it, ``step`` adds it to θ in F's weight pass. The traces' form (row-sparse or dense) follows
    ``hessian``, see the module's docstring."""

    algo = "metaoptimize"

    def __init__(self, ns, needs, **hp):
        super().__init__(ns, needs, **hp)
        full = self.approximation == "full"
        self.dense = self.hessian == "exact"
        if self.dense:
            traces = {"Y": WHOLE, "X": Columns(3), "Q": _ColumnsOfH() if full else WHOLE}
        else:
            q = _RowSparse(self._blocks, 1, vec_of_h=True) if full else WHOLE
            traces = {"Y": _DiagonalBlocks(), "X": _RowSparse(self._blocks, 3), "Q": q}
        self.layouts = {
            "step": COUNTER,
            "beta": WHOLE,
            "alpha": WHOLE,
            "m": PARAM,
            "v": PARAM,
            "meta_m": WHOLE,
            "meta_v": WHOLE,
            **traces,
            "delta": PARAM,
        }
        self.program = _Program(
            self.base,
            self.convention == "authors_code",
            self.sigma == "exponential",
            self.kappa != 0,
            self.hessian,
            self.clip_decay,
        )
        self._resolved = {}

    def _blocks(self, structure) -> _Blocks:
        """b over ``structure``, resolved once per structure the optimizer meets."""
        if structure not in self._resolved:
            self._resolved[structure] = _Blocks(self.blocks, structure)
        return self._resolved[structure]

    def initial_state(self, structure, params):
        ns, xp = self.ns, self.ns.xp
        m = self._blocks(structure).m
        full = self.approximation == "full"
        beta0 = math.log(self.alpha0) if self.sigma == "exponential" else self.alpha0

        def vector(value):
            return xp.full((m,), value, dtype=ns.float, device=ns.device)

        def columns(*leading):
            return [ns.zeros((*leading, *s)) for s in structure.shapes]

        if self.dense:
            Y = xp.concat([xp.eye(m, dtype=ns.float, device=ns.device), ns.zeros((2 * m, m))])  # Y_0 = [I | 0]ᵀ
            X = [columns(m) for _ in range(3)]
            Q = columns(m, m) if full else None
        else:  # the diagonals of Y_0's blocks, X_0 and Q_0's entries in column b(j)
            Y, X = [vector(1.0), vector(0.0), vector(0.0)], [structure.zeros() for _ in range(3)]
            Q = [structure.zeros()] if full else None
        return {
            "step": 0,
            "beta": vector(beta0),
            "alpha": vector(float(self.alpha0)),
            "m": structure.zeros(),
            "v": structure.zeros(),
            "meta_m": vector(0.0),
            "meta_v": vector(0.0),
            "Y": Y,
            "X": X,
            "Q": Q if Q is not None else ns.zeros((0, m)),
            "delta": structure.zeros(),
        }

    def _base_constants(self, t: int) -> tuple:
        """``BASE_CONSTANTS`` at step t, in float64 on the host (rounded once where they meet an array)."""
        values = {
            "kappa": self.kappa,
            "gamma": self.gamma,
            "rho": self.rho,
            "lam": self.lam,
            "c": self.c,
            "one_minus_c": 1.0 - self.c,
            "eps": self.eps,
            **host.moment_constants(self.rho, self.lam, t),
        }
        return tuple(float(values[name]) for name in BASE_CONSTANTS)

    # -- F, G and the fused step ------------------------------------------------------------

    def _F(self, state, step):
        return self._advance(state, step, None)[0]

    def _G(self, state, step):
        return list(state.stored["delta"])  # (M3), computed by F

    def _step(self, state, step, params):
        return self._advance(state, step, params)

    def _advance(self, state, step, params):
        """S_t from S_{t−1}, and θ + Δw when ``params`` are given (``step``)."""
        ns, xp = self.ns, self.ns.xp
        s, structure = state.stored, state.structure
        blocks = self._blocks(structure)
        M, t = blocks.m, s["step"] + 1
        full, meta_first, program, dense = (
            self.approximation == "full",
            self.order == "meta_first",
            self.program,
            self.dense,
        )
        g = step.grad
        H, Xm, Xv = s["X"]
        Q = (s["Q"] if dense else s["Q"][0]) if full else None

        hess_H, diagonal, d_hess = self._curvature(step, structure, H, Q, M)
        z, dz = (self._dense_sums if dense else self._row_sparse_sums)(blocks, g, H, Q, hess_H, diagonal)

        # the meta update and the Y rows, on m-vectors (and m × m blocks in the dense form)
        vectors = (_Term(s[name]) for name in ("beta", "meta_m", "meta_v"))
        meta = _meta_cell(xp, self.meta, program.authors, *vectors, _Term(z), t, self.hyperparameters)
        if dense:
            Y, identity = s["Y"], _Term(xp.eye(M, dtype=ns.float, device=ns.device))
            Y_blocks, rows = [_Term(Y[r * M : (r + 1) * M, :]) for r in range(3)], _dense_rows
        else:
            identity = _Term(xp.ones((M,), dtype=ns.float, device=ns.device))
            Y_blocks, rows = [_Term(diagonal_of_block) for diagonal_of_block in s["Y"]], _diagonal_rows
        meta_rows = _meta_rows(meta, *Y_blocks, identity, dz, self.gamma, program.authors, rows)
        Y_beta, Y_m, Y_v, C = (_bare(x) for x in meta_rows)
        beta = _bare(meta.beta)
        step_beta = beta if meta_first else s["beta"]  # (M19) the order option
        alpha_m = xp.exp(step_beta) if program.exponential else step_beta  # (M1)
        B = Y_beta if meta_first else C

        # the fused passes, per parameter: one where every operand has the weights' shape (the row-sparse form,
        # and the dense one with m = 1, its columns viewed so), else one per output shape — weights, the m
        # columns, and Q's m × m
        per_weight = not dense or M == 1
        constants = self._base_constants(t)
        parts = ("weights", "traces", "q") if full else ("weights", "traces")
        groups = [parts] if per_weight else [(part,) for part in parts]
        passes = [ns.fused(_pass_step(program, group, params is not None)) for group in groups]
        new = {"m": [], "v": [], "delta": [], "theta": [], "X": ([], [], []), "Q": []}
        for k, g_k in enumerate(g):
            shape = structure.shapes[k]

            def column(x, shape=shape):
                """A column operand as the pass takes it: with dense m = 1 in the weights' shape (0-d stays)."""
                return xp.reshape(x, shape) if dense and M == 1 and x.ndim else x

            curvature = [column(hess_H[k])] if hess_H is not None else [diagonal[k]] if diagonal is not None else []
            rows_of_B = blocks.rows_at(B, k) if dense else blocks.at(B, k)
            operands = {
                "weights": [params[k]] if params is not None else [],
                "traces": [column(rows_of_B), *(column(x[k]) for x in (H, Xm, Xv)), *curvature],
                "q": [column(x) for x in self._q_operands(blocks, k, C, H, Xm, Xv, Q, hess_H, d_hess)] if full else [],
            }
            lead = [g_k, s["m"][k], s["v"][k], *([step.params[k]] if program.decayed else []), blocks.at(alpha_m, k)]
            out = []
            for kernel, group in zip(passes, groups):
                out += kernel(*lead, *(x for part in group for x in operands[part]), *constants)
            if program.base in _UPDATES_M:
                new["m"].append(out.pop(0))
            if program.base in _UPDATES_V:
                new["v"].append(out.pop(0))
            new["delta"].append(out.pop(0))
            if params is not None:
                new["theta"].append(out.pop(0))
            trace_shape, q_shape = ((M, *shape), (M, M, *shape)) if dense else (shape, shape)
            for trace in new["X"]:
                trace.append(xp.reshape(out.pop(0), trace_shape))
            if full:
                new["Q"].append(xp.reshape(out.pop(0), q_shape))

        changed = {
            "step": t,
            "beta": beta,
            "alpha": alpha_m,
            "meta_m": _bare(meta.m),
            "meta_v": _bare(meta.v),
            "Y": xp.concat([Y_beta, Y_m, Y_v]) if dense else [Y_beta, Y_m, Y_v],
            "X": [list(c) for c in new["X"]],
            "delta": new["delta"],
        }
        if program.base in _UPDATES_M:
            changed["m"] = new["m"]
        if program.base in _UPDATES_V:
            changed["v"] = new["v"]
        if full:
            changed["Q"] = new["Q"] if dense else [new["Q"]]
        return changed, new["theta"]

    def _dense_sums(self, blocks, g, H, Q, hess_H, diagonal):
        """The one reduction round in the dense form, per parameter: z = Hᵀg (M14), and the sums of (M16) that γ
        then scales: (∇²f H)ᵀH (2x2 and full, under a Hessian) and gᵀQ (full). Returns (z, dz: m × m or ZERO)."""
        ns, xp, M = self.ns, self.ns.xp, blocks.m
        curved, full = self.approximation != "L", self.approximation == "full"
        partials = []
        for k, g_k in enumerate(g):
            flat_g = xp.reshape(g_k, (-1,))
            H2 = xp.reshape(H[k], (M, -1))
            terms = [xp.vecdot(H2, flat_g)]
            if curved:
                terms.append(xp.reshape(xp.matmul(xp.reshape(hess_H[k], (M, -1)), xp.matrix_transpose(H2)), (-1,)))
            if full:
                terms.append(xp.reshape(xp.vecdot(xp.reshape(Q[k], (M, M, -1)), flat_g), (-1,)))
            partials.append(xp.concat(terms))
        sums = ns.reduce_sum(partials) if partials else ns.zeros((M + M * M * (curved + full),))
        dz = ZERO
        for position in range(curved + full):
            dz = dz + self.gamma * _Term(xp.reshape(sums[M + position * M * M : M + (position + 1) * M * M], (M, M)))
        return sums[:M], dz

    def _row_sparse_sums(self, blocks, g, h, q, hess_H, diagonal):
        """The same in the row-sparse form, where each sum over a weight's row has one term, in column b(j): per
        block, z = Σ h g (M14), and the diagonals of (∇²f H)ᵀH = Σ a h² (2x2, diagonal Hessian a) and of gᵀQ
        = Σ g q (full, Hessian-free). Returns (z, dz: an m-vector or ZERO)."""
        pairs = [(h, g)]
        if self.approximation != "L" and diagonal is not None:
            pairs.append(([a * h_k for a, h_k in zip(diagonal, h)], h))
        if q is not None:
            pairs.append((q, g))
        z, *curvature_sums = blocks.sums(pairs)
        dz = ZERO
        for total in curvature_sums:
            dz = dz + self.gamma * _Term(total)
        return z, dz

    def _curvature(self, step, structure, H, Q, M):
        """(M13) what the configuration reads: (∇²f H per parameter (M, *shape) | None, diag ∇²f | None,
        ∇²f(γQ[i, j]) + ∇³f[H_i, γH_j] per parameter (M, M, *shape) | None)."""
        xp, gamma = self.ns.xp, self.gamma
        if self.hessian == "diagonal":
            return None, hessian_diagonal(step.hvp, structure), None
        if self.hessian != "exact":
            return None, None, None

        def column(arrays, *index):
            return [a[(*index, ...)] for a in arrays]

        products = [step.hvp(column(H, i)) for i in range(M)]
        hess_H = [xp.stack([p[k] for p in products]) for k in range(len(H))]
        if self.approximation != "full":
            return hess_H, None, None
        pairs = []
        for i in range(M):
            for j in range(M):
                curved = step.hvp([gamma * leaf for leaf in column(Q, i, j)])
                third = step.third(column(H, i), [gamma * leaf for leaf in column(H, j)])
                pairs.append([a + b for a, b in zip(curved, third)])
        d_hess = [xp.reshape(xp.stack([p[k] for p in pairs]), (M, M, *H[k].shape[1:])) for k in range(len(H))]
        return hess_H, None, d_hess

    def _q_operands(self, blocks, k, C, H, Xm, Xv, Q, hess_H, d_hess) -> list:
        """The Q part's arrays for parameter k: each column operand at axis 0 (column i) and axis 1 (the
        direction j), as views that broadcast to (m, m, *shape); in the row-sparse form (and with m = 1) both are
        the weight's one entry, at i = j = b(j)."""
        xp = self.ns.xp

        def both(x):
            if not self.dense or blocks.m == 1:  # one pass with the weights: no axes to broadcast
                return [x, x]
            return [xp.expand_dims(x, axis=1), xp.expand_dims(x, axis=0)]

        C_k = blocks.rows_at(C, k) if self.dense else blocks.at(C, k)
        operands = [*both(C_k), *both(H[k]), *both(Xm[k]), *both(Xv[k]), Q[k]]
        if hess_H is not None:
            operands += [*both(hess_H[k]), d_hess[k]]
        return operands


# --------------------------------------------------------------------------- constructor (the spec's signature)


def _to_host(ns):
    """The conversion of ``blocks`` to the host: a namespace array's ids as a NumPy array, any other value as
    given."""

    def convert(blocks):
        if hasattr(blocks, "shape") and not isinstance(blocks, (np.ndarray, np.generic)):
            return ns.to_numpy(blocks)
        return blocks

    return convert


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
    *,
    ns,
):
    """MetaOptimize (spec/metaoptimize.md#metaoptimize). ``eps`` and ``meta_eps`` default to the convention's:
    1e-8 (paper), 1e-10 (authors_code)."""
    hp, needs = checked.metaoptimize(
        base,
        meta,
        alpha0,
        eta,
        gamma,
        sigma,
        approximation,
        hessian,
        clip_decay,
        order,
        convention,
        rho,
        lam,
        c,
        kappa,
        eps,
        meta_rho,
        meta_lam,
        meta_c,
        meta_kappa,
        meta_eps,
    )
    return MetaOptimize(ns, needs, blocks=host.block_partition(blocks, _to_host(ns)), clip_decay=clip_decay, **hp)
