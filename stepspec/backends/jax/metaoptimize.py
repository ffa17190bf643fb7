"""MetaOptimize in jax, spec/metaoptimize.md (tags M1–M19), over parameter pytrees (``_core.Optimizer``); written
from the spec page, the NumPy reference is not called.

Every base and meta update is entrywise, so a step is: the sums over each step-size block that the meta rows
read — z = Hᵀg (M14), and for 2x2 and full the m × m products Hᵀ∇²f P_w and L_t P_h (M16) — as per-leaf
partial sums in one ``reduce_sum``; the meta update and the Y rows on m-vectors; then one elementwise pass per
leaf for the base update and the traces. Everything that selects a program (base, meta, σ, approximation,
Hessian mode, clip, order, convention, the block partition) is static; every number is a traced scalar.

The traces have two forms (as in the torch backend, spec/backends.md#metaoptimize):

- **row-sparse** (hessian = free or diagonal): ∂x'/∂x is diagonal, so every reachable state has Y's blocks
  diagonal, X's row j non-zero only in column b(j), and Q[(i, k), j] non-zero only at i = j = b(k). X is
  stored as three parameter-shaped pytrees, Q as one, Y as three m-vectors: O(n) whatever m. With weight-wise
  step sizes every m-vector (β, α, m̄, v̄, Y's diagonals) is itself a parameter-shaped pytree and the whole
  step is elementwise per leaf, no block sum at all.
- **dense** (hessian = exact, whose ∇²f couples the columns): X as ``Columns(3)`` with m columns, Q as m × m
  columns per weight, Y a 3m × m matrix; the m (m²) Hessian and third-derivative products run in ``lax.map``
  over the columns, so the program holds one of each whatever m is.

Float32: the host derives 1 − ρ, 1 − λ, 1 − c, 1 − γ, 1 − ηκ̄ and log ρ, log λ (and the meta counterparts) in
float64 before rounding them once, and the bias corrections 1 − ρᵗ are −expm1(t log ρ), accurate at every t;
no value wider than the working precision exists in the step. The normaliser's s-partials are the
reference's products, so they leave float32's range where the reference's do (spec/metaoptimize.md#float32).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ...errors import HyperparameterError
from .. import _hyperparameters as checked
from .. import _metaoptimize_host as host
from ._core import COUNTER, DTYPES, PARAM, WHOLE, Columns, Layout, Optimizer, log, reduce_sum
from .idbd import hessian_diagonal

# --------------------------------------------------------------------------- structural zeros


class _Zero:
    """A partial derivative this configuration does not have (∂D/∂v of SGD, the Hessian term of a Hessian-free
    run): it absorbs products and drops out of sums, so no pass over the weights is traced for it."""

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


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


# --------------------------------------------------------------------------- the normaliser (M2)


class _Normalised:
    """N(a, s) = a/(√s + ε) (ε outside the root) or a/√(s + ε) (inside, the authors' code), with N_a, N_s, N_as,
    N_ss (N_aa = 0). Where s = 0 (a coordinate that never saw a gradient, so a = 0) N = 0 and the s-partials,
    unbounded there, are 0. The products are the reference's, so float32 leaves the range where it does
    (spec/metaoptimize.md#float32)."""

    def __init__(self, a, s, eps, inside: bool):
        if inside:
            root = jnp.sqrt(s + eps)
            cube = 2 * root**3
            self.value, self.a = a / root, 1 / root
            self.s, self.as_, self.ss = -a / cube, -1 / cube, 3 * a / (4 * root**5)
            return
        r = jnp.sqrt(s)
        q = r + eps
        positive = r > 0

        def where_positive(numerator, denominator):
            return jnp.where(positive, numerator / jnp.where(positive, denominator, 1), 0)

        self.value, self.a = a / q, 1 / q
        self.s = where_positive(-a, 2 * r * q**2)
        self.as_ = where_positive(-jnp.ones_like(r), 2 * r * q**2)
        self.ss = where_positive(a * (q + 2 * r), 4 * r**3 * q**3)


# --------------------------------------------------------------------------- base cells (M3)–(M8)


class _BaseCell:
    """One base update, entrywise: the new m, v, the direction D of Δw = −α⊙D − κα⊙w (M3), and the partials
    the traces read (∂m'/∂v = ∂v'/∂m = 0 for every base); constants are numbers, absent ones ZERO."""

    m_g = v_g = ZERO
    m_m = v_v = 1.0
    D_g = D_m = D_v = D_gg = D_gm = D_gv = D_mm = D_mv = D_vv = ZERO

    def __init__(self, m, v, D, **partials):
        self.m, self.v, self.D = m, v, D
        self.__dict__.update(partials)


def _through_normaliser(m, v, N: _Normalised, a_g, a_m, s_g, s_v, s_gg, **partials) -> _BaseCell:
    """D = N(a(g, m), s(g, v)), a linear and s quadratic in g: the chain rule to (g, m, v)."""
    return _BaseCell(
        m,
        v,
        N.value,
        D_g=N.a * a_g + N.s * s_g,
        D_m=N.a * a_m,
        D_v=N.s * s_v,
        D_gg=N.ss * s_g**2 + 2 * N.as_ * a_g * s_g + N.s * s_gg,
        D_gm=N.as_ * a_m * s_g,
        D_gv=N.ss * s_g * s_v + N.as_ * a_g * s_v,
        D_mv=N.as_ * a_m * s_v,
        D_vv=N.ss * s_v**2,
        **partials,
    )


def _base_cell(name: str, authors: bool, g, m, v, s, t) -> _BaseCell:
    rho, lam, c = s["rho"], s["lam"], s["c"]
    if name == "sgd":  # (M4) D = g
        return _BaseCell(m, v, g, D_g=1.0)
    momentum = {"m_g": s["one_minus_rho"], "m_m": rho}
    new_m = rho * m + s["one_minus_rho"] * g
    if name == "sgdm":  # (M5) m' = ρm + (1 − ρ)g, D = m' (the authors' code: the old m)
        if authors:
            return _BaseCell(new_m, v, m, D_m=1.0, **momentum)
        return _BaseCell(new_m, v, new_m, D_g=s["one_minus_rho"], D_m=rho, **momentum)
    if name == "lion":  # (M7) D = sign(c m + (1 − c) g) with the old m
        return _BaseCell(new_m, v, jnp.sign(c * m + s["one_minus_c"] * g), **momentum)
    if authors:  # un-normalised sums, bias-corrected v, ε inside the root (spec: the authors' code)
        mu = s["one_minus_lam"] / -jnp.expm1(t * s["log_lam"])
        new_v = lam * v + g * g
        second = {"s_g": 2 * mu * g, "s_v": mu * lam, "s_gg": 2 * mu, "v_g": 2 * g, "v_v": lam}
        if name == "rmsprop":
            return _through_normaliser(m, new_v, _Normalised(g, mu * new_v, s["eps"], True), 1.0, ZERO, **second)
        new_m = rho * m + g
        N = _Normalised(new_m, mu * new_v, s["eps"], True)
        return _through_normaliser(new_m, new_v, N, 1.0, rho, m_g=1.0, m_m=rho, **second)
    new_v = lam * v + s["one_minus_lam"] * g * g  # v' = λv + (1 − λ)g²
    v_g = 2 * s["one_minus_lam"] * g
    if name == "rmsprop":  # (M6) D = g/(√v' + ε)
        N = _Normalised(g, new_v, s["eps"], False)
        return _through_normaliser(m, new_v, N, 1.0, ZERO, v_g, lam, 2 * s["one_minus_lam"], v_g=v_g, v_v=lam)
    b1, b2 = -jnp.expm1(t * s["log_rho"]), -jnp.expm1(t * s["log_lam"])  # (M8) 1 − ρᵗ, 1 − λᵗ
    N = _Normalised(new_m / b1, new_v / b2, s["eps"], False)
    return _through_normaliser(
        new_m,
        new_v,
        N,
        s["one_minus_rho"] / b1,
        rho / b1,
        v_g / b2,
        lam / b2,
        2 * s["one_minus_lam"] / b2,
        v_g=v_g,
        v_v=lam,
        **momentum,
    )


# --------------------------------------------------------------------------- meta cells (M9)–(M12)


class _MetaCell:
    """One meta update, entrywise over the m blocks, from z = Hᵀg: β' = (1 − ηκ̄)β − ηU (M9), the new m̄, v̄,
    and the partials the Y rows read; constants are numbers, absent ones ZERO."""

    beta_z = beta_m = beta_v = m_z = v_z = ZERO
    m_m = v_v = 1.0

    def __init__(self, beta, m, v, beta_beta, **partials):
        self.beta, self.m, self.v, self.beta_beta = beta, m, v, beta_beta
        self.__dict__.update(partials)


def _meta_cell(name: str, authors: bool, beta, m, v, z, s, t) -> _MetaCell:
    eta, rho, lam, c = s["eta"], s["meta_rho"], s["meta_lam"], s["meta_c"]
    if name == "fixed":  # β' = β: no step and no decay (the authors' code's `fixed`)
        return _MetaCell(beta, m, v, 1.0)
    shrink = s["meta_shrink"]  # 1 − ηκ̄, the authors' code's meta weight decay
    if name == "sgd":  # (M10) U = z
        return _MetaCell(shrink * beta - eta * z, m, v, shrink, beta_z=-eta)
    if name == "lion":  # (M12) U = sign(c̄ m̄ + (1 − c̄) z) with the old m̄; m̄' = ρ̄m̄ + (1 − ρ̄)z
        step = jnp.sign(c * m + s["meta_one_minus_c"] * z)
        new_m = rho * m + s["meta_one_minus_rho"] * z
        return _MetaCell(shrink * beta - eta * step, new_m, v, shrink, m_m=rho, m_z=s["meta_one_minus_rho"])
    # (M11) adam / rmsprop with the moments that include z (disambiguation 8); rmsprop: U = z/(√v̄' + ε̄)
    if authors:
        mu = s["meta_one_minus_lam"] / -jnp.expm1(t * s["meta_log_lam"])
        new_v, v_z = lam * v + z * z, 2 * z
        scale, s_z, s_v = mu * new_v, 2 * mu * z, mu * lam
        new_m = rho * m + z
        a, a_z, a_m, m_z = new_m, 1.0, rho, 1.0
    else:
        new_v = lam * v + s["meta_one_minus_lam"] * z * z
        v_z = 2 * s["meta_one_minus_lam"] * z
        scale, s_z, s_v = new_v, v_z, lam
        if name == "adam":  # bias-corrected: m̂/(√v̂ + ε̄)
            b1, b2 = -jnp.expm1(t * s["meta_log_rho"]), -jnp.expm1(t * s["meta_log_lam"])
            new_m, m_z = rho * m + s["meta_one_minus_rho"] * z, s["meta_one_minus_rho"]
            a, a_z, a_m = new_m / b1, s["meta_one_minus_rho"] / b1, rho / b1
            scale, s_z, s_v = scale / b2, s_z / b2, s_v / b2
    if name == "rmsprop":
        a, a_z, a_m, new_m, m_z = z, 1.0, ZERO, m, ZERO
    N = _Normalised(a, scale, s["meta_eps"], authors)
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


def _sigma(kind: str, beta):
    """(σ(β), σ'(β), σ''(β)) (M1): exponential, or identity (σ' = 1, σ'' = 0)."""
    if kind == "exponential":
        alpha = jnp.exp(beta)
        return alpha, alpha, alpha
    return beta, 1.0, ZERO


def _meta_rows(meta: _MetaCell, Yb, Ym, Yv, identity, rows, dz, s, authors: bool):
    """(M15)–(M16) Y' = ∂y'/∂y P_y + ∂y'/∂z dz with P = γ[Y; X; Q] + (1 − γ)[I; 0; 0] and dz = Hᵀ∇²f P_w
    (+ L_t P_h); ``rows`` scales a block by a meta partial (an m-vector). Returns (Y'^β, Y'^m̄, Y'^v̄, C),
    C = γY^β + (1 − γ)I."""
    gamma = s["gamma"]
    C = gamma * Yb + s["one_minus_gamma"] * identity
    Pmm, Pmv = gamma * Ym, gamma * Yv
    Y_beta = rows(meta.beta_beta) * C + rows(meta.beta_m) * Pmm + rows(meta.beta_v) * Pmv + rows(meta.beta_z) * dz
    Y_m = rows(meta.m_m) * Pmm + rows(meta.m_z) * dz
    Y_v = rows(meta.v_v) * Pmv + rows(meta.v_z) * dz
    if authors:  # the authors' code carries no Y trace: Y ≡ [I; 0; 0], even under meta weight decay
        return identity, Y_m, Y_v, identity
    return Y_beta, Y_m, Y_v, C


def _h_row(base: _BaseCell, alpha, kappa, forced, Pw, Pm, Pv, hess_Pw, decay):
    """(M17) H' = ∂w'/∂β B + ∂w'/∂(w, m, v) P; ``forced`` is the ∂w'/∂β B part, ``decay`` IDBD's clipped
    diagonal of ∂w'/∂w (None without clip_decay)."""
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


# --------------------------------------------------------------------------- step-size blocks


class Blocks:
    """b(j), the step-size block of weight j (static, hashable): 'scalar', 'weightwise', or integer ids 0…m−1
    over the concatenated leaves; ids compare and hash by value, so equal partitions share a program."""

    def __init__(self, spec):
        if isinstance(spec, str):
            self.kind, self.ids, self._key = spec, None, spec
        else:
            self.kind, self.ids = "ids", np.asarray(spec, np.int32)
            self.ids.flags.writeable = False
            self._key = ("ids", self.ids.tobytes())

    def __eq__(self, other):
        return isinstance(other, Blocks) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def m(self, n: int) -> int:
        if self.kind == "ids":
            return int(self.ids.max()) + 1
        return 1 if self.kind == "scalar" else n

    def flat_ids(self, n: int) -> np.ndarray:
        if self.kind == "ids":
            return self.ids
        return np.zeros(n, np.int32) if self.kind == "scalar" else np.arange(n, dtype=np.int32)

    def check(self, n: int) -> None:
        if self.kind == "ids" and self.ids.shape[0] != n:
            raise HyperparameterError(
                "blocks", f"assigns {self.ids.shape[0]} weights to blocks, but the parameters have n = {n}"
            )

    def leaf_ids(self, leaves) -> list:
        """For each leaf, its entries' block ids (an int32 array of the leaf's shape, a compile-time constant;
        None for scalar step sizes, which need none)."""
        if self.kind == "scalar":
            return [None] * len(leaves)
        ids, offset, out = self.flat_ids(sum(leaf.size for leaf in leaves)), 0, []
        for leaf in leaves:
            out.append(jnp.asarray(ids[offset : offset + leaf.size].reshape(leaf.shape)))
            offset += leaf.size
        return out

    def expand(self, vector, ids, ndim: int):
        """An m-vector (or an m × k matrix's rows) at the weights of one leaf of ``ndim`` axes: entry b(j) at
        weight j, the k columns leading."""
        if self.kind == "scalar":
            return vector[0] if vector.ndim == 1 else vector[0].reshape(vector.shape[1:] + (1,) * ndim)
        taken = vector[ids]
        return taken if vector.ndim == 1 else jnp.moveaxis(taken, -1, 0)

    def sums(self, pairs_per_leaf, ids_per_leaf, m: int):
        """Row-sparse block sums: for each pair (x, y) of leaf arrays, Σ_{j: b(j) = i} x_j y_j for every block
        i; one ``reduce_sum`` for all pairs. Returns an array (pairs, m)."""
        partials = []
        for pairs, ids in zip(pairs_per_leaf, ids_per_leaf):
            if self.kind == "scalar":
                partials.append(jnp.stack([jnp.sum(x * y) for x, y in pairs])[:, None])
            else:
                products = jnp.stack([jnp.ravel(x * y) for x, y in pairs], axis=1)
                partials.append(jax.ops.segment_sum(products, jnp.ravel(ids), num_segments=m).T)
        return reduce_sum(partials)


# --------------------------------------------------------------------------- trace layouts


class _MVector(Layout):
    """An m-vector (β, α, m̄, v̄): one array, or a parameter-shaped pytree with weight-wise step sizes."""

    def __init__(self, weightwise: bool):
        self.inner = PARAM if weightwise else WHOLE

    def flat(self, stored, structure):
        return self.inner.flat(stored, structure)

    def store(self, name, value, structure, default=None):
        return self.inner.store(name, value, structure, default)


class _DiagonalBlocks(Layout):
    """Y = [Y^β; Y^m̄; Y^v̄] (3m × m) held as its three blocks' diagonals, m-vectors (the row-sparse form)."""

    def __init__(self, vector: _MVector):
        self.vector = vector

    def flat(self, stored, structure):
        return jnp.concatenate([jnp.diag(self.vector.flat(d, structure)) for d in stored])

    def store(self, name, value, structure, default=None):
        m = self.vector.flat(default[0], structure).shape[0]
        blocks = np.asarray(WHOLE.store(name, value, structure, jnp.zeros((3 * m, m)))).reshape(3, m, m)
        diagonals = np.diagonal(blocks, axis1=1, axis2=2)
        if np.any(blocks - diagonals[:, :, None] * np.eye(m) != 0):
            raise host.off_diagonal_blocks(name)
        return tuple(self.vector.store(name, d, structure, default[0]) for d in diagonals)


class _RowSparse(Layout):
    """A trace held by its entries in column b(j) of weight j's rows: X (3n × m, row j of block r at r·n + j) as
    three parameter-shaped pytrees, or Q (nm × m, entry (b(j)·n + j, b(j))) as one."""

    def __init__(self, blocks: Blocks, parts: int, vec_of_h: bool = False):
        self.blocks, self.parts, self.vec_of_h = blocks, parts, vec_of_h

    def _positions(self, n):
        ids, m = self.blocks.flat_ids(n), self.blocks.m(n)
        weights = np.arange(n)
        rows = [ids * n + weights] if self.vec_of_h else [r * n + weights for r in range(self.parts)]
        return rows, ids, (n * m if self.vec_of_h else self.parts * n, m)

    def flat(self, stored, structure):
        rows, ids, shape = self._positions(structure.n)
        out = jnp.zeros(shape, DTYPES[structure.dtype])
        for part, r in zip(stored, rows):
            out = out.at[r, ids].set(structure.join(part))
        return out

    def store(self, name, value, structure, default=None):
        rows, ids, shape = self._positions(structure.n)
        flat = np.array(WHOLE.store(name, value, structure, jnp.zeros(shape)))
        entries = [flat[r, ids] for r in rows]
        for r in rows:
            flat[r, ids] = 0
        if np.any(flat != 0):
            raise host.off_row_sparse_pattern(name, "jax")
        return tuple(PARAM.store(name, e, structure) for e in entries)


class _ColumnsOfH(Layout):
    """Q (nm × m) in the dense form: one pytree whose leaves are (m, m, *leaf.shape), entry [i, j] the weight's
    row of block i (column i of H, vec(H) stacking the columns) in column j."""

    def flat(self, stored, structure):
        leaves = _leaves(stored)
        m = leaves[0].shape[0]
        per_block = jnp.concatenate([leaf.reshape(m, m, -1) for leaf in leaves], axis=2)  # (i, j, n)
        return jnp.transpose(per_block, (0, 2, 1)).reshape(m * structure.n, m)

    def store(self, name, value, structure, default=None):
        m = _leaves(default)[0].shape[0]
        flat = WHOLE.store(name, value, structure, jnp.zeros((m * structure.n, m)))
        blocks = flat.reshape(m, structure.n, m)  # (i, n, j)
        offsets = np.cumsum([0, *structure.sizes])
        return structure.unflatten(
            jnp.transpose(blocks[:, a:b, :], (0, 2, 1)).reshape((m, m, *s))
            for a, b, s in zip(offsets, offsets[1:], structure.shapes)
        )


# --------------------------------------------------------------------------- the optimizer

SCALARS = (
    *("eta", "gamma", "one_minus_gamma", "kappa", "meta_shrink"),
    *(
        prefix + name
        for prefix in ("", "meta_")
        for name in ("rho", "one_minus_rho", "log_rho", "lam", "one_minus_lam", "log_lam", "c", "one_minus_c", "eps")
    ),
)
"""The names of the packed scalars' entries, in order."""


def _unpacked(scalars) -> dict:
    return dict(zip(SCALARS, scalars["packed"]))


class MetaOptimizeState(NamedTuple):
    step: jax.Array
    beta: object
    alpha: object
    m: object
    v: object
    meta_m: object
    meta_v: object
    Y: object
    X: object
    Q: object
    delta: object


class MetaOptimize(Optimizer):
    """(F, G) of spec/metaoptimize.md on parameter pytrees; the trace form follows ``hessian``, see the module's
    docstring. F computes Δw (M3) and stores it as ``delta``; G returns it."""

    algo = "metaoptimize"
    StateTree = MetaOptimizeState

    def __init__(self, dtype="float64", needs=frozenset({"grad"}), **hp):
        super().__init__(dtype, needs, **hp)
        self.partition = Blocks(self.blocks)
        self.dense = self.hessian == "exact"
        full = self.approximation == "full"
        weightwise = self.partition.kind == "weightwise" and not self.dense
        vector = _MVector(weightwise)
        if self.dense:
            traces = {"Y": WHOLE, "X": Columns(3), "Q": _ColumnsOfH() if full else WHOLE}
        else:
            q = _RowSparse(self.partition, 1, vec_of_h=True) if full else WHOLE
            traces = {"Y": _DiagonalBlocks(vector), "X": _RowSparse(self.partition, 3), "Q": q}
        self.layouts = {
            "step": COUNTER,
            "beta": vector,
            "alpha": vector,
            "m": PARAM,
            "v": PARAM,
            "meta_m": vector,
            "meta_v": vector,
            **traces,
            "delta": PARAM,
        }

    def static(self):
        return (
            self.base,
            self.meta,
            self.sigma,
            self.approximation,
            self.hessian,
            self.clip_decay,
            self.order,
            self.convention == "authors_code",
            self.partition,
        )

    def scalars(self):
        """The hyperparameters and host-derived constants packed in one vector of the working precision (one
        transfer per call: F and G each take one; ``_unpacked`` names its entries inside the step). Derived on
        the host in float64 before rounding: 1 − ρ, 1 − λ, …, 1 − ηκ̄ and log ρ, log λ for the bias
        corrections 1 − ρᵗ = −expm1(t log ρ) (−inf at ρ = 0, where the correction is 1)."""
        values = {
            "eta": self.eta,
            "gamma": self.gamma,
            "one_minus_gamma": 1 - self.gamma,
            "kappa": self.kappa,
            "meta_shrink": 1 - self.eta * self.meta_kappa,
        }
        for prefix in ("", "meta_"):
            rho, lam, c = (getattr(self, prefix + name) for name in ("rho", "lam", "c"))
            values.update(
                {
                    prefix + "rho": rho,
                    prefix + "one_minus_rho": 1 - rho,
                    prefix + "log_rho": log(rho),
                    prefix + "lam": lam,
                    prefix + "one_minus_lam": 1 - lam,
                    prefix + "log_lam": log(lam),
                    prefix + "c": c,
                    prefix + "one_minus_c": 1 - c,
                    prefix + "eps": getattr(self, prefix + "eps"),
                }
            )
        values, dtype = [values[name] for name in SCALARS], DTYPES[self.dtype]
        if any(isinstance(v, jax.core.Tracer) for v in values):  # injected under jit (optax)
            return {"packed": jnp.stack([jnp.asarray(v, dtype) for v in values])}
        return {"packed": jnp.asarray(np.array(values, np.float64), dtype)}

    def initial_state(self, structure):
        n, dtype = structure.n, DTYPES[structure.dtype]
        self.partition.check(n)
        m = self.partition.m(n)
        alpha0 = jnp.asarray(self.alpha0, dtype)
        beta0 = log(alpha0) if self.sigma == "exponential" else alpha0
        if self.layouts["beta"].inner is PARAM:

            def vector(value):
                return structure.unflatten(jnp.full(s, value, dtype) for s in structure.shapes)
        else:

            def vector(value):
                return jnp.full((m,), value, dtype)

        full = self.approximation == "full"
        if self.dense:
            Y = jnp.concatenate([jnp.eye(m, dtype=dtype), jnp.zeros((2 * m, m), dtype)])
            columns = structure.unflatten(jnp.zeros((m, *s), dtype) for s in structure.shapes)
            X = (columns, columns, columns)
            Q = structure.unflatten(jnp.zeros((m, m, *s), dtype) for s in structure.shapes) if full else None
        else:
            Y = (vector(1.0), vector(0.0), vector(0.0))  # Algorithm 1: Y_0 = [I | 0]ᵀ
            X = (structure.zeros(), structure.zeros(), structure.zeros())
            Q = (structure.zeros(),) if full else None
        return MetaOptimizeState(
            step=jnp.zeros((), jnp.int32),
            beta=vector(beta0),
            alpha=vector(alpha0),
            m=structure.zeros(),
            v=structure.zeros(),
            meta_m=vector(0.0),
            meta_v=vector(0.0),
            Y=Y,
            X=X,
            Q=Q if Q is not None else jnp.zeros((0, m), dtype),
            delta=structure.zeros(),
        )

    def check_F(self, state, step):
        self.partition.check(state.structure.n)

    # -- F and G ------------------------------------------------------------------------

    @staticmethod
    def step_F(scalars, static, state, step):
        dense = static[4] == "exact"
        return (_dense_F if dense else _row_sparse_F)(_unpacked(scalars), static, state, step)

    @staticmethod
    def step_G(scalars, static, state, step):
        return state.delta  # (M3), computed by F


def _row_sparse_F(s, static, state, step):
    """F in the row-sparse form (hessian = free or diagonal)."""
    base_name, meta_name, sigma, approximation, hessian, clip, order, authors, blocks = static
    t = state.step + 1
    kappa = s["kappa"]
    full, meta_first, gamma = approximation == "full", order == "meta_first", s["gamma"]
    treedef = jax.tree_util.tree_structure(step.grad)
    g, m, v, (h, xm, xv) = _leaves(step.grad), _leaves(state.m), _leaves(state.v), (_leaves(x) for x in state.X)
    h, xm, xv = list(h), list(xm), list(xv)
    w = _leaves(step.params) if step.params is not None else [ZERO] * len(g)  # observed where κ ≠ 0
    q = _leaves(state.Q[0]) if full else [None] * len(g)
    diagonal = _leaves(hessian_diagonal(step.hvp, step.grad)) if hessian == "diagonal" else [ZERO] * len(g)

    def pairs(k):
        """Leaf k's terms of z (M14) and dz = Hᵀ∇²f P_w + L_t P_h (M16), each an (x, y) to sum per block."""
        terms = [(h[k], g[k])]
        if approximation != "L" and hessian == "diagonal":
            terms.append((diagonal[k] * h[k], gamma * h[k]))
        if full:
            terms.append((g[k], gamma * q[k]))
        return terms

    def meta_part(beta, meta_m, meta_v, Yb, Ym, Yv, sums):
        z, dz = sums[0], sum(sums[1:], ZERO)
        meta = _meta_cell(meta_name, authors, beta, meta_m, meta_v, z, s, t)
        Y_beta, Y_m, Y_v, C = _meta_rows(meta, Yb, Ym, Yv, 1.0, lambda x: x, dz, s, authors)
        step_sizes = _sigma(sigma, meta.beta if meta_first else beta)  # (M19) the order option
        return meta, (Y_beta, Y_m, Y_v), step_sizes, Y_beta if meta_first else C, C

    def weight_part(k, alpha, dalpha, d2alpha, B, C):
        base = _base_cell(base_name, authors, g[k], m[k], v[k], s, t)
        delta = -alpha * base.D - kappa * alpha * w[k]  # (M3)
        forcing = -(base.D + kappa * w[k]) * dalpha  # ∂w'/∂β, entry (j, b(j))
        Pw, Pm, Pv = gamma * h[k], gamma * xm[k], gamma * xv[k]
        hess_Pw = diagonal[k] * Pw
        decay = None
        if clip:  # IDBD's (1 − α a²)⁺ on the diagonal of ∂w'/∂w
            decay = jnp.maximum(1 - kappa * alpha - alpha * base.D_g * diagonal[k], 0)
        new_h = _h_row(base, alpha, kappa, forcing * B, Pw, Pm, Pv, hess_Pw, decay)  # (M17)
        new_xm = base.m_g * hess_Pw + base.m_m * Pm
        new_xv = base.v_g * hess_Pw + base.v_v * Pv
        new_q = None
        if full:  # (M18), Hessian-free: no ∇²f or ∇³f term
            d = _Direction(base, dalpha, d2alpha, C, Pw, Pm, Pv, ZERO)
            new_q = _q_entry(
                base, alpha, dalpha, kappa, w[k], gamma, d, C, h[k], xm[k], xv[k], ZERO, gamma * q[k], ZERO
            )
        zeros = jnp.zeros_like(g[k])
        new_q = None if new_q is None else _materialise(new_q, zeros)
        return [_materialise(x, zeros) for x in (base.m, base.v, delta, new_h, new_xm, new_xv)] + [new_q]

    vectors = (state.beta, state.meta_m, state.meta_v, *state.Y)
    if blocks.kind == "weightwise":  # every weight its own block: the whole step is per leaf
        out, metas = [], []
        for k, leaves in enumerate(zip(*(_leaves(x) for x in vectors))):
            sums = [x * y for x, y in pairs(k)]
            meta, Y, (alpha, dalpha, d2alpha), B, C = meta_part(*leaves, sums)
            zeros = jnp.zeros_like(g[k])
            metas.append([_materialise(x, zeros) for x in (meta.beta, alpha, meta.m, meta.v, *Y)])
            out.append(weight_part(k, alpha, dalpha, d2alpha, B, C))
        beta, alpha, meta_m, meta_v, *Y = (jax.tree_util.tree_unflatten(treedef, list(x)) for x in zip(*metas))
    else:
        ids = blocks.leaf_ids(g)
        M = state.beta.shape[0]
        sums = list(blocks.sums([pairs(k) for k in range(len(g))], ids, M))
        meta, Y, (alpha_m, dalpha_m, d2alpha_m), B, C = meta_part(*vectors, sums)
        beta, alpha, meta_m, meta_v = meta.beta, alpha_m, meta.m, meta.v
        Y = [_materialise(y, jnp.zeros_like(beta)) for y in Y]

        def at(x, k):
            return blocks.expand(x, ids[k], g[k].ndim) if isinstance(x, jax.Array) else x

        out = [
            weight_part(k, at(alpha_m, k), at(dalpha_m, k), at(d2alpha_m, k), at(B, k), at(C, k)) for k in range(len(g))
        ]

    def tree(position):
        return jax.tree_util.tree_unflatten(treedef, [o[position] for o in out])

    return MetaOptimizeState(
        step=t,
        beta=beta,
        alpha=alpha,
        m=tree(0),
        v=tree(1),
        meta_m=meta_m,
        meta_v=meta_v,
        Y=tuple(Y),
        X=(tree(3), tree(4), tree(5)),
        Q=(tree(6),) if full else state.Q,
        delta=tree(2),
    )


def _materialise(x, zeros):
    """A per-weight result as an array of the leaf's shape and dtype (ZERO and numbers broadcast)."""
    return zeros if x is ZERO else jnp.broadcast_to(jnp.asarray(x, zeros.dtype), zeros.shape)


def _dense_F(s, static, state, step):
    """F in the dense form (hessian = exact): m columns per trace, products in ``lax.map`` over them."""
    base_name, meta_name, sigma, approximation, hessian, clip, order, authors, blocks = static
    t = state.step + 1
    kappa, gamma = s["kappa"], s["gamma"]
    full, meta_first = approximation == "full", order == "meta_first"
    treedef = jax.tree_util.tree_structure(step.grad)
    g, m, v = _leaves(step.grad), _leaves(state.m), _leaves(state.v)
    H_tree = state.X[0]
    H, Xm, Xv = (_leaves(x) for x in state.X)
    w = _leaves(step.params) if step.params is not None else [ZERO] * len(g)
    M = state.beta.shape[0]
    ids = blocks.leaf_ids(g)
    hess_H = _leaves(lax.map(step.hvp, H_tree))  # ∇²f H, column by column (M13)
    Pw = [gamma * x for x in H]
    hess_Pw = [gamma * x for x in hess_H]

    partials = []  # one reduction round: z (M14), Hᵀ∇²f P_w and L_t P_h (M16) per leaf
    for k in range(len(g)):
        axes = g[k].ndim
        terms = [jnp.tensordot(H[k], g[k], axes=axes).ravel()]
        if approximation != "L":
            terms.append(jnp.tensordot(hess_H[k], Pw[k], axes=(list(range(1, axes + 1)),) * 2).ravel())
        if full:
            terms.append(jnp.tensordot(gamma * _leaves(state.Q)[k], g[k], axes=axes).ravel())
        partials.append(jnp.concatenate(terms))
    sums = reduce_sum(partials)
    z, dz = sums[:M], ZERO
    if approximation != "L":
        dz = sums[M : M + M * M].reshape(M, M)
        if full:
            dz = dz + sums[M + M * M :].reshape(M, M)

    meta = _meta_cell(meta_name, authors, state.beta, state.meta_m, state.meta_v, z, s, t)
    Yb, Ym, Yv = state.Y[:M], state.Y[M : 2 * M], state.Y[2 * M :]
    rows = lambda x: x[:, None] if isinstance(x, jax.Array) and x.ndim == 1 else x  # noqa: E731
    Y_beta, Y_m, Y_v, C = _meta_rows(meta, Yb, Ym, Yv, jnp.eye(M, dtype=Yb.dtype), rows, dz, s, authors)
    alpha_m, dalpha_m, d2alpha_m = _sigma(sigma, meta.beta if meta_first else state.beta)  # (M19)
    B = Y_beta if meta_first else C

    def at(x, k):
        return blocks.expand(x, ids[k], g[k].ndim) if isinstance(x, jax.Array) else x

    out = []
    third_products = None
    if full:  # ∇²f of every γQ[i, j] and ∇³f[H_i, P_w,j]: m² products of each, in one lax.map
        Q_tree = state.Q

        def flat_pairs(x):
            return x.reshape((M * M, *x.shape[2:]))

        dH = jax.tree_util.tree_map(lambda x: flat_pairs(gamma * x), Q_tree)
        us = jax.tree_util.tree_map(lambda x: flat_pairs(jnp.broadcast_to(x[:, None], (M, *x.shape))), H_tree)
        vs = jax.tree_util.tree_map(lambda x: flat_pairs(jnp.broadcast_to(gamma * x[None], (M, *x.shape))), H_tree)
        products = lax.map(
            lambda a: jax.tree_util.tree_map(jnp.add, step.hvp(a[0]), step.third(a[1], a[2])), (dH, us, vs)
        )
        third_products = [x.reshape((M, M, *x.shape[1:])) for x in _leaves(products)]
    for k in range(len(g)):
        alpha, dalpha, d2alpha = at(alpha_m, k), at(dalpha_m, k), at(d2alpha_m, k)
        base = _base_cell(base_name, authors, g[k], m[k], v[k], s, t)
        delta = -alpha * base.D - kappa * alpha * w[k]  # (M3)
        forcing = -(base.D + kappa * w[k]) * dalpha
        Pm, Pv = gamma * Xm[k], gamma * Xv[k]
        new_h = _h_row(base, alpha, kappa, forcing * at(B, k), Pw[k], Pm, Pv, hess_Pw[k], None)  # (M17)
        new_xm = base.m_g * hess_Pw[k] + base.m_m * Pm
        new_xv = base.v_g * hess_Pw[k] + base.v_v * Pv
        zeros, columns = jnp.zeros_like(g[k]), jnp.zeros_like(H[k])
        new_q = None
        if full:  # (M18): axis 0 the column i of H, axis 1 the direction j (column j of P)
            C_b = at(C, k)  # (M, *shape): C[b(j), i]
            d = _Direction(base, dalpha, d2alpha, C_b[None], Pw[k][None], Pm[None], Pv[None], hess_Pw[k][None])
            Qk = _leaves(state.Q)[k]
            new_q = _q_entry(
                base, alpha, dalpha, kappa, w[k], gamma, d, C_b[:, None], H[k][:, None], Xm[k][:, None],
                Xv[k][:, None], hess_H[k][:, None], gamma * Qk, third_products[k],
            )  # fmt: skip
            new_q = _materialise(new_q, jnp.zeros_like(Qk))
        out.append(
            [_materialise(x, zeros) for x in (base.m, base.v, delta)]
            + [_materialise(x, columns) for x in (new_h, new_xm, new_xv)]
            + [new_q]
        )

    def tree(position):
        return jax.tree_util.tree_unflatten(treedef, [o[position] for o in out])

    return MetaOptimizeState(
        step=t,
        beta=meta.beta,
        alpha=alpha_m,
        m=tree(0),
        v=tree(1),
        meta_m=jnp.broadcast_to(meta.m, (M,)),
        meta_v=jnp.broadcast_to(meta.v, (M,)),
        Y=jnp.concatenate([jnp.broadcast_to(y, (M, M)) for y in (Y_beta, Y_m, Y_v)]),
        X=(tree(3), tree(4), tree(5)),
        Q=tree(6) if full else state.Q,
        delta=tree(2),
    )


# --------------------------------------------------------------------------- constructor (the spec's signature)


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
    dtype="float64",
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
    return MetaOptimize(dtype, needs, blocks=host.block_partition(blocks), clip_decay=clip_decay, **hp)
