"""MetaOptimize in torch, spec/metaoptimize.md (tags M1–M19), on parameter structures; written from the spec
page, the NumPy reference is not called.

Per weight (one tensor per parameter): the base state m, v, the update δ and the traces X = [H; X^m; X^v], Q.
Per step-size block (``Whole``, m entries): β, α, the meta moments m̄, v̄ and Y. Every base and meta update is
entrywise, so a step is: the sums over each block that the meta rows read — z = Hᵀg (M14), and for 2x2 and
full the m × m products Hᵀ∇²f P_w and L_t P_h (M16) — in one reduction round; the meta update on m-vectors;
then elementwise passes for the base update and the traces.

The traces are stored in one of two forms (spec/backends.md#metaoptimize):

- **row-sparse** (hessian = free or diagonal): ∂x'/∂x is then diagonal, so from Y_0 = [I; 0; 0] and X_0 = 0
  every state keeps Y's three blocks diagonal, X's row j non-zero only in column b(j) and Q[(i, k), j] non-zero
  only at i = j = b(k). X is stored as three per-weight tensors, Q as one, Y as three m-vectors: O(n) memory
  whatever m, and the block sums are scatter-adds by block id (none for weight-wise step sizes: every weight is
  its own block). ``init`` rejects an override outside that pattern (no run reaches it).
- **dense** (hessian = exact, whose ∇²f couples the columns): X as m per-weight columns per block
  (``Columns(3)``), Q as m × m per-weight columns, Y as a 3m × m matrix; block sums are inner products per
  column.
"""

from __future__ import annotations

import math
from functools import cached_property

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ...errors import HyperparameterError, StateError
from .. import _hyperparameters as checked
from .. import _metaoptimize_host as host
from . import _fused
from ._core import (
    COUNTER,
    PARAM,
    WHOLE,
    Columns,
    Layout,
    Optimizer,
    Structure,
    as_tensors,
    dots,
    reduce_sum,
)
from .idbd import hessian_diagonal

# --------------------------------------------------------------------------- per-weight arithmetic


class _Zero:
    """A structural zero of the step (a partial derivative this base does not have, the Hessian term of a
    Hessian-free run): it absorbs products and drops out of sums, so that no pass over the weights is spent
    on it. (The reference multiplies by an array of zeros instead, which differs only where the other factor
    is not finite.)"""

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

    def __repr__(self) -> str:
        return "ZERO"


ZERO = _Zero()


class Tensors:
    """A per-weight quantity over a parameter structure, one tensor per parameter, with elementwise arithmetic
    as multi-tensor kernels (``torch._foreach_*``). The other operand is another ``Tensors`` of the same
    structure, a Python number, or a 0-d tensor (a scalar step size, which broadcasts)."""

    __slots__ = ("items",)

    def __init__(self, items):
        self.items = list(items)

    def _combine(self, kernel, other):
        if isinstance(other, Tensors):
            return Tensors(kernel(self.items, other.items))
        if isinstance(other, (int, float)) or (isinstance(other, torch.Tensor) and other.dim() == 0):
            return Tensors(kernel(self.items, other))
        return NotImplemented

    def __add__(self, other):
        return self._combine(torch._foreach_add, other)

    __radd__ = __add__

    def __sub__(self, other):
        return self._combine(torch._foreach_sub, other)

    def __rsub__(self, other):
        return -self + other

    def __mul__(self, other):
        return self._combine(torch._foreach_mul, other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self._combine(torch._foreach_div, other)

    def __rtruediv__(self, other):
        reciprocal = Tensors(torch._foreach_reciprocal(self.items))
        return reciprocal if isinstance(other, (int, float)) and other == 1 else reciprocal * other

    def __neg__(self):
        return Tensors(torch._foreach_neg(self.items))

    def __pow__(self, exponent):
        return Tensors(torch._foreach_pow(self.items, exponent))


def _sqrt(x):
    return Tensors(torch._foreach_sqrt(x.items)) if isinstance(x, Tensors) else torch.sqrt(x)


def _sign(x):
    return Tensors(torch._foreach_sign(x.items)) if isinstance(x, Tensors) else torch.sign(x)


def _positive_part(x):
    if isinstance(x, Tensors):
        return Tensors(torch._foreach_clamp_min(x.items, 0.0))
    return torch.clamp_min(x, 0.0) if isinstance(x, torch.Tensor) else max(x, 0.0)


def _where_positive(r, numerator, denominator):
    """numerator/denominator where r > 0, else 0 (entrywise; the operands may be numbers)."""

    def one(r_, num, den):
        return torch.where(r_ > 0, num / den, 0.0)

    if not isinstance(r, Tensors):
        return one(r, numerator, denominator)
    count = len(r.items)

    def items(x):
        return x.items if isinstance(x, Tensors) else [x] * count

    return Tensors(one(*args) for args in zip(r.items, items(numerator), items(denominator)))


def _materialise(x, structure: Structure) -> list[torch.Tensor]:
    """A per-weight result as the list of tensors a state stores."""
    if x is ZERO:
        return structure.zeros()
    return x.items


# --------------------------------------------------------------------------- the normaliser (M2)


class _Normalised:
    """N(a, s) = a/(√s + ε) (ε outside the root, torch's) or a/√(s + ε) (inside, the authors' code), and its
    partials N_a, N_s, N_as, N_ss (N_aa = 0), each computed when first read. Where s = 0 (a weight that never
    saw a gradient, so a = 0) N = 0 and the s-partials, unbounded there, are 0. In float32 the products in the
    s-partials leave the range for extreme s (spec/metaoptimize.md#float32), as in the reference."""

    def __init__(self, a, s, eps: float, inside: bool):
        self._a, self.inside = a, inside
        if inside:
            self._root = _sqrt(s + eps)
            self.value = a / self._root
        else:
            self._r = _sqrt(s)
            self._q = self._r + eps
            self.value = a / self._q

    @cached_property
    def a(self):
        return 1 / (self._root if self.inside else self._q)

    @cached_property
    def s(self):
        if self.inside:
            return -self._a / (2 * self._root**3)
        return _where_positive(self._r, -self._a, 2 * self._r * self._q**2)

    @cached_property
    def as_(self):
        if self.inside:
            return -1 / (2 * self._root**3)
        return _where_positive(self._r, -1.0, 2 * self._r * self._q**2)

    @cached_property
    def ss(self):
        if self.inside:
            return 3 * self._a / (4 * self._root**5)
        r, q = self._r, self._q
        return _where_positive(r, self._a * (q + 2 * r), 4 * r**3 * q**3)


# --------------------------------------------------------------------------- base cells (M3)–(M8)


class _BaseCell:
    """One base update, entrywise over the weights: the new m, v, the direction D of Δw = −α⊙D − κα⊙w (M3),
    and the partials the traces read (∂m'/∂v = ∂v'/∂m = 0 for every base). A partial that is a constant is a
    number, one that vanishes is ZERO."""

    m_g = ZERO
    m_m = 1.0
    v_g = ZERO
    v_v = 1.0
    D_g = D_m = D_v = D_gg = D_gm = D_gv = D_mm = D_mv = D_vv = ZERO

    def __init__(self, m, v, D, **partials):
        self.m, self.v, self.D = m, v, D
        self.__dict__.update(partials)


class _NormalisedCell(_BaseCell):
    """D = N(a(g, m), s(g, v)), a linear and s quadratic in g: the chain rule to (g, m, v)
    (spec/metaoptimize.md, derivation of the blocks)."""

    def __init__(self, m, v, N: _Normalised, a_g, a_m, s_g, s_v, s_gg, **partials):
        super().__init__(m, v, N.value, **partials)
        self.N, self.a_g, self.a_m, self.s_g, self.s_v, self.s_gg = N, a_g, a_m, s_g, s_v, s_gg

    @cached_property
    def D_g(self):
        return self.N.a * self.a_g + self.N.s * self.s_g

    @cached_property
    def D_m(self):
        return self.N.a * self.a_m

    @cached_property
    def D_v(self):
        return self.N.s * self.s_v

    @cached_property
    def D_gg(self):
        N = self.N
        return N.ss * self.s_g**2 + 2 * N.as_ * self.a_g * self.s_g + N.s * self.s_gg

    @cached_property
    def D_gm(self):
        return self.N.as_ * self.a_m * self.s_g

    @cached_property
    def D_gv(self):
        return self.N.ss * self.s_g * self.s_v + self.N.as_ * self.a_g * self.s_v

    @cached_property
    def D_mv(self):
        return self.N.as_ * self.a_m * self.s_v

    @cached_property
    def D_vv(self):
        return self.N.ss * self.s_v**2


def _base_cell(name: str, g: Tensors, m: Tensors, v: Tensors, t: int, hp: dict, authors: bool) -> _BaseCell:
    rho, lam, c, eps = hp["rho"], hp["lam"], hp["c"], hp["eps"]
    if name == "sgd":  # (M4) D = g
        return _BaseCell(m, v, g, D_g=1.0)
    momentum = {"m_g": 1 - rho, "m_m": rho}
    if name == "sgdm":  # (M5) m' = ρm + (1 − ρ)g, D = m' (the authors' code: the old m)
        new_m = rho * m + (1 - rho) * g
        if authors:
            return _BaseCell(new_m, v, m, D_m=1.0, **momentum)
        return _BaseCell(new_m, v, new_m, D_g=1 - rho, D_m=rho, **momentum)
    if name == "lion":  # (M7) D = sign(c m + (1 − c) g) with the old m; m' = ρm + (1 − ρ)g
        return _BaseCell(rho * m + (1 - rho) * g, v, _sign(c * m + (1 - c) * g), **momentum)
    if authors:  # un-normalised sums, bias-corrected v, ε inside the root (spec: the authors' code)
        mu = (1 - lam) / (1 - lam**t)
        new_v = lam * v + g * g
        second = {"s_g": 2 * mu * g, "s_v": mu * lam, "s_gg": 2 * mu, "v_g": 2 * g, "v_v": lam}
        if name == "rmsprop":
            return _NormalisedCell(m, new_v, _Normalised(g, mu * new_v, eps, True), 1.0, ZERO, **second)
        new_m = rho * m + g
        N = _Normalised(new_m, mu * new_v, eps, True)
        return _NormalisedCell(new_m, new_v, N, 1.0, rho, m_g=1.0, m_m=rho, **second)
    new_v = lam * v + (1 - lam) * g * g  # v' = λv + (1 − λ)g²
    v_g = 2 * (1 - lam) * g
    if name == "rmsprop":  # (M6) D = g/(√v' + ε)
        N = _Normalised(g, new_v, eps, False)
        return _NormalisedCell(m, new_v, N, 1.0, ZERO, v_g, lam, 2 * (1 - lam), v_g=v_g, v_v=lam)
    new_m = rho * m + (1 - rho) * g  # (M8) adamw: D = m̂/(√v̂ + ε), m̂ = m'/(1 − ρᵗ), v̂ = v'/(1 − λᵗ)
    b1, b2 = 1 - rho**t, 1 - lam**t
    N = _Normalised(new_m / b1, new_v / b2, eps, False)
    return _NormalisedCell(
        new_m,
        new_v,
        N,
        (1 - rho) / b1,
        rho / b1,
        v_g / b2,
        lam / b2,
        2 * (1 - lam) / b2,
        v_g=v_g,
        v_v=lam,
        **momentum,
    )


# --------------------------------------------------------------------------- meta cells (M9)–(M12)


class _MetaCell:
    """One meta update, entrywise over the m blocks, from z = Hᵀg: β' = (1 − ηκ̄)β − ηU (M9), the new m̄, v̄,
    and the partials the Y rows read; constants are numbers, vanishing ones ZERO."""

    beta_z = beta_m = beta_v = m_z = v_z = ZERO
    m_m = v_v = 1.0

    def __init__(self, beta, m, v, beta_beta, **partials):
        self.beta, self.m, self.v, self.beta_beta = beta, m, v, beta_beta
        self.__dict__.update(partials)


def _meta_cell(name: str, beta, m, v, z, t: int, hp: dict, authors: bool) -> _MetaCell:
    eta, rho, lam, c, eps = hp["eta"], hp["meta_rho"], hp["meta_lam"], hp["meta_c"], hp["meta_eps"]
    if name == "fixed":  # β' = β: no step and no decay (the authors' code's `fixed`)
        return _MetaCell(beta, m, v, 1.0)
    shrink = 1 - eta * hp["meta_kappa"]  # meta weight decay κ̄, the authors' code's form
    if name == "sgd":  # (M10) U = z
        return _MetaCell(shrink * beta - eta * z, m, v, shrink, beta_z=-eta)
    if name == "lion":  # (M12) U = sign(c̄ m̄ + (1 − c̄) z) with the old m̄; m̄' = ρ̄m̄ + (1 − ρ̄)z
        step = _sign(c * m + (1 - c) * z)
        return _MetaCell(shrink * beta - eta * step, rho * m + (1 - rho) * z, v, shrink, m_m=rho, m_z=1 - rho)
    # (M11) adam / rmsprop with the moments that include z (disambiguation 8); rmsprop: U = z/(√v̄' + ε̄), m̄ stays
    if authors:
        mu = (1 - lam) / (1 - lam**t)
        new_v, v_z = lam * v + z * z, 2 * z
        s, s_z, s_v = mu * new_v, 2 * mu * z, mu * lam
        new_m, m_z, a_m = rho * m + z, 1.0, rho
        a, a_z = new_m, 1.0
    else:
        new_v, v_z = lam * v + (1 - lam) * z * z, 2 * (1 - lam) * z
        s, s_z, s_v = new_v, v_z, lam
        if name == "adam":  # bias-corrected: m̂/(√v̂ + ε̄)
            b1, b2 = 1 - rho**t, 1 - lam**t
            new_m, m_z = rho * m + (1 - rho) * z, 1 - rho
            a, a_z, a_m = new_m / b1, (1 - rho) / b1, rho / b1
            s, s_z, s_v = s / b2, s_z / b2, s_v / b2
    if name == "rmsprop":
        a, a_z, a_m, new_m, m_z = z, 1.0, ZERO, m, ZERO
    N = _Normalised(a, s, eps, authors)
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


def _sigma(kind: str, beta: torch.Tensor):
    """(σ(β), σ'(β), σ''(β)) (M1): exponential, or identity (σ' = 1, σ'' = 0)."""
    if kind == "exponential":
        alpha = torch.exp(beta)
        return alpha, alpha, alpha
    return beta.clone(), 1.0, ZERO


# --------------------------------------------------------------------------- step-size blocks over a structure


class _Blocks:
    """b(j), the step-size block of weight j, over a parameter structure: expanding an m-vector to the weights,
    and sums over each block."""

    def __init__(self, blocks, structure: Structure):
        n, self.structure = structure.n, structure
        if isinstance(blocks, str):
            self.kind, self.m = blocks, (1 if blocks == "scalar" else n)
            return
        if tuple(blocks.shape) != (n,):
            raise HyperparameterError(
                "blocks", f"assigns {blocks.shape[0]} weights to blocks, but the parameters have n = {n}"
            )
        self.kind, self.m = "ids", int(blocks.max()) + 1
        self.ids = torch.split(blocks.to(structure.device), structure.sizes)

    @cached_property
    def flat_ids(self) -> torch.Tensor:
        """b as one (n,) index tensor (for the spec's flat view of a state)."""
        n, device = self.structure.n, self.structure.device
        if self.kind == "scalar":
            return torch.zeros(n, dtype=torch.long, device=device)
        if self.kind == "weightwise":
            return torch.arange(n, device=device)
        return torch.cat(self.ids)

    def expand(self, values):
        """An m-vector as a per-weight quantity (entry b(j) at weight j); numbers and ZERO pass through."""
        if not isinstance(values, torch.Tensor):
            return values
        if self.kind == "scalar":
            return values.reshape(())
        shapes = self.structure.shapes
        if self.kind == "weightwise":
            return Tensors(part.reshape(s) for part, s in zip(torch.split(values, self.structure.sizes), shapes))
        return Tensors(values[ids].reshape(s) for ids, s in zip(self.ids, shapes))

    def sums(self, pairs) -> list[torch.Tensor]:
        """For each pair (x, y) of per-weight quantities, Σ_{j: b(j) = i} x_j y_j for every block i: one
        reduction round for all of them (none for weight-wise blocks, where each sum has one term)."""
        if self.kind == "weightwise":
            return [self.structure.join((x * y).items) for x, y in pairs]
        if self.kind == "scalar":
            return list(_column_sums(pairs).reshape(len(pairs), 1))
        m = self.m

        def scattered(x, y, ids):  # one tensor's share of every block sum
            return torch.zeros(m, dtype=x.dtype, device=x.device).index_add_(0, ids, (x * y).reshape(-1))

        partials = [
            torch.cat([scattered(x.items[k], y.items[k], ids) for x, y in pairs]) for k, ids in enumerate(self.ids)
        ]
        return list(reduce_sum(partials).reshape(len(pairs), m))


def _column_sums(pairs) -> torch.Tensor:
    """Σ_j x_j y_j over the whole structure for each pair (x, y): one reduction round."""
    per_pair = [dots(x.items, y.items) for x, y in pairs]
    return reduce_sum([torch.stack(partials) for partials in zip(*per_pair)])


# --------------------------------------------------------------------------- trace layouts


class _RowSparse(Layout):
    """A trace stored by its entries in column b(j) of weight j's rows, zero elsewhere: X (3n × m, row j of
    block r at r·n + j) as three per-weight tensors, or Q (nm × m, entry (b(j), j) of column b(j)) as one."""

    def __init__(self, blocks_of, parts: int, vec_of_h: bool = False):
        self.blocks_of, self.parts, self.vec_of_h = blocks_of, parts, vec_of_h

    def _positions(self, structure):
        blocks = self.blocks_of(structure)
        n, ids = structure.n, blocks.flat_ids
        weights = torch.arange(n, device=structure.device)
        rows = [ids * n + weights] if self.vec_of_h else [r * n + weights for r in range(self.parts)]
        shape = (n * blocks.m if self.vec_of_h else self.parts * n, blocks.m)
        return rows, ids, shape

    def flat(self, stored, structure):
        rows, ids, shape = self._positions(structure)
        out = torch.zeros(shape, dtype=structure.dtype, device=structure.device)
        for part, r in zip(stored, rows):
            out[r, ids] = structure.join(part)
        return out

    def store(self, name, value, structure, default):
        rows, ids, shape = self._positions(structure)
        (flat,), _ = as_tensors(name, [value], StateError, structure.dtype, structure.device)
        if tuple(flat.shape) != shape:
            raise StateError(name, f"must have shape {shape}, got {tuple(flat.shape)}")
        entries = [flat[r, ids] for r in rows]
        rest = flat.clone()
        for r in rows:
            rest[r, ids] = 0
        if torch.any(rest != 0):
            raise host.off_row_sparse_pattern(name, "torch")
        return [structure.split(e) for e in entries]

    def clone(self, stored):
        return [[t.clone() for t in part] for part in stored]


class _DiagonalBlocks(Layout):
    """Y = [Y^β; Y^m̄; Y^v̄] (3m × m) stored as the diagonals of its three blocks (the row-sparse form)."""

    def flat(self, stored, structure):
        return torch.cat([torch.diag(d) for d in stored])

    def store(self, name, value, structure, default):
        m = default[0].shape[0]
        (flat,), _ = as_tensors(name, [value], StateError, structure.dtype, structure.device)
        if tuple(flat.shape) != (3 * m, m):
            raise StateError(name, f"must have shape {(3 * m, m)}, got {tuple(flat.shape)}")
        blocks = flat.reshape(3, m, m)
        diagonals = torch.diagonal(blocks, dim1=1, dim2=2)
        if torch.any(blocks - torch.diag_embed(diagonals) != 0):
            raise host.off_diagonal_blocks(name)
        return list(diagonals.clone())

    def clone(self, stored):
        return [d.clone() for d in stored]


class _ColumnsOfH(Columns):
    """Q (nm × m) in the dense form: m blocks of n rows (one per column of H, vec(H) stacking the columns),
    m columns, each one tensor per parameter; m is known only at init."""

    def __init__(self):
        super().__init__(blocks=0)

    def store(self, name, value, structure, default):
        return Columns(len(default)).store(name, value, structure, default)


# --------------------------------------------------------------------------- the optimizer


class MetaOptimize(Optimizer):
    """(F, G) of spec/metaoptimize.md on parameter structures; the trace form (row-sparse or dense) follows
    ``hessian``, see the module's docstring."""

    algo = "metaoptimize"

    def __init__(self, dtype, device, needs, **hp):
        super().__init__(dtype, device, needs, **hp)
        self.dense = self.hessian == "exact"
        self._resolved_blocks = {}
        if self.dense:
            traces = {"Y": WHOLE, "X": Columns(3), "Q": _ColumnsOfH() if self.approximation == "full" else WHOLE}
        else:
            q = _RowSparse(self._blocks, 1, vec_of_h=True) if self.approximation == "full" else WHOLE
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

    def _blocks(self, structure: Structure) -> _Blocks:
        """b over ``structure``, resolved once per structure the optimizer meets."""
        if structure not in self._resolved_blocks:
            self._resolved_blocks[structure] = _Blocks(self.blocks, structure)
        return self._resolved_blocks[structure]

    def initial_state(self, structure, params):
        blocks = self._blocks(structure)
        m, dtype, device = blocks.m, structure.dtype, structure.device

        def vector(value):
            return torch.full((m,), value, dtype=dtype, device=device)

        if self.dense:
            columns = [[structure.zeros() for _ in range(m)] for _ in range(3)]
            Y = torch.cat(
                [torch.eye(m, dtype=dtype, device=device), torch.zeros((2 * m, m), dtype=dtype, device=device)]
            )
            Q = [[structure.zeros() for _ in range(m)] for _ in range(m)] if self.approximation == "full" else None
        else:
            columns = [structure.zeros() for _ in range(3)]
            Y = [vector(1.0), vector(0.0), vector(0.0)]  # Algorithm 1: Y_0 = [I | 0]ᵀ
            Q = [structure.zeros()] if self.approximation == "full" else None
        return {
            "step": 0,
            "beta": vector(math.log(self.alpha0) if self.sigma == "exponential" else self.alpha0),
            "alpha": vector(self.alpha0),
            "m": structure.zeros(),
            "v": structure.zeros(),
            "meta_m": vector(0.0),
            "meta_v": vector(0.0),
            "Y": Y,
            "X": columns,
            "Q": Q if Q is not None else torch.zeros((0, m), dtype=dtype, device=device),
            "delta": structure.zeros(),
        }

    # -- F and G ------------------------------------------------------------------------

    def _F_(self, state, step):
        s, structure = state.stored, state.structure
        blocks = self._blocks(structure)
        t = s["step"] + 1
        hp, authors = self.hyperparameters, self.convention == "authors_code"
        gamma, kappa = self.gamma, self.kappa or ZERO
        full, meta_first = self.approximation == "full", self.order == "meta_first"
        g = Tensors(step.grad)
        w = Tensors(step.params) if self.kappa else ZERO  # read only where κ ≠ 0 (then observed)
        traces = (_DenseRows if self.dense else _RowSparseRows)(self, s, step, blocks, g)  # the reduction round

        meta = _meta_cell(self.meta, s["beta"], s["meta_m"], s["meta_v"], traces.z, t, hp, authors)
        beta_for_base = meta.beta if meta_first else s["beta"]  # (M19) the order option
        alpha_m, dalpha_m, d2alpha_m = _sigma(self.sigma, beta_for_base)
        alpha, dalpha, d2alpha = blocks.expand(alpha_m), blocks.expand(dalpha_m), blocks.expand(d2alpha_m)
        base = _base_cell(self.base, g, Tensors(s["m"]), Tensors(s["v"]), t, hp, authors)
        delta = -alpha * base.D - kappa * alpha * w  # (M3)

        Y = (traces.Yb, traces.Ym, traces.Yv)
        Y_beta, Y_m, Y_v, C = _meta_rows(meta, Y, traces.identity, traces.rows, traces.dz, gamma, authors)

        # (M17)–(M18) the base rows, with B = C (Algorithm 1's order) or Y'^β (meta first)
        B = Y_beta if meta_first else C
        forcing = -(base.D + kappa * w) * dalpha  # ∂w'/∂β, entry (j, b(j))
        X, Q = traces.base_rows(base, alpha, dalpha, d2alpha, kappa, w, forcing, B, C, full)

        s.update(
            step=t,
            beta=meta.beta,
            alpha=alpha_m,
            m=_materialise(base.m, structure),
            v=_materialise(base.v, structure),
            meta_m=meta.m,
            meta_v=meta.v,
            Y=traces.store_Y(Y_beta, Y_m, Y_v),
            X=X,
            Q=Q if full else s["Q"],
            delta=_materialise(delta, structure),
        )

    def _G(self, state, step):
        return [d.clone() for d in state.stored["delta"]]  # (M3), computed by F

    def _apply_(self, state, step, params):
        torch._foreach_add_(params, state.stored["delta"])


def _meta_rows(meta: _MetaCell, Y, identity, rows, dz, gamma: float, authors: bool):
    """(M15)–(M16) the meta rows Y' = [Y'^β; Y'^m̄; Y'^v̄] with P = γ[Y; X; Q] + (1 − γ)[I; 0; 0], from
    Y's blocks in the traces' form (``rows`` scales a block by a meta partial) and dz = Hᵀ∇²f P_w (+ L_t P_h);
    returns (Y'^β, Y'^m̄, Y'^v̄, C) with C = γY^β + (1 − γ)I."""
    Yb, Ym, Yv = Y
    C = gamma * Yb + (1 - gamma) * identity
    Pmm, Pmv = gamma * Ym, gamma * Yv
    Y_beta = rows(meta.beta_beta) * C + rows(meta.beta_m) * Pmm + rows(meta.beta_v) * Pmv + rows(meta.beta_z) * dz
    Y_m = rows(meta.m_m) * Pmm + rows(meta.m_z) * dz
    Y_v = rows(meta.v_v) * Pmv + rows(meta.v_z) * dz
    if authors:  # the authors' code carries no Y trace: Y ≡ [I; 0; 0], even under meta weight decay
        return identity, Y_m, Y_v, identity
    return Y_beta, Y_m, Y_v, C


def _h_row(base, alpha, kappa, forced, Pw, Pm, Pv, hess_Pw, decay):
    """(M17) one column of H' = ∂w'/∂β B + ∂w'/∂(w, m, v) P; ``forced`` is its ∂w'/∂β B part and ``decay``
    IDBD's clipped diagonal of ∂w'/∂w (None without clip_decay)."""
    through_w = decay * Pw if decay is not None else Pw - kappa * alpha * Pw - alpha * base.D_g * hess_Pw
    return forced + through_w - alpha * base.D_m * Pm - alpha * base.D_v * Pv


class _Direction:
    """The first-order change of the base cell along one column of P (δβ, δw, δm, δv), for (M18)."""

    def __init__(self, base, dalpha, d2alpha, d_beta, dw, dm, dv, dg):
        self.d_alpha, self.d_dalpha, self.dw = dalpha * d_beta, d2alpha * d_beta, dw
        self.dD = base.D_g * dg + base.D_m * dm + base.D_v * dv
        self.dD_g = base.D_gg * dg + base.D_gm * dm + base.D_gv * dv
        self.dD_m = base.D_gm * dg + base.D_mm * dm + base.D_mv * dv
        self.dD_v = base.D_gv * dg + base.D_mv * dm + base.D_vv * dv


def _q_entry(base, alpha, dalpha, kappa, w, gamma, d: _Direction, C_i, H_i, Xm_i, Xv_i, hess_H_i, dH_i, d_hess_H_i):
    """(M18) column i of the directional derivative of H' = −(D + κw)⊙σ'⊙C[b] + γ(H − κα⊙H − α⊙D_g⊙∇²f H
    − α⊙D_m⊙X^m − α⊙D_v⊙X^v) along d, with C, X^m, X^v held fixed (eq. 48, 64); C_i is C[b, i] per weight."""
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


class _RowSparseRows:
    """One step's traces in the row-sparse form (hessian = free or diagonal): h, x^m, x^v, q per weight (the
    entries in column b(j)), Y as three m-vectors; ∇²f is diag(∇²f) (from n Hessian-vector products) or 0."""

    def __init__(self, optimizer, s, step, blocks, g):
        self.optimizer, self.blocks, self.gamma = optimizer, blocks, optimizer.gamma
        self.h, self.xm, self.xv = (Tensors(part) for part in s["X"])
        self.q = Tensors(s["Q"][0]) if optimizer.approximation == "full" else None
        self.Yb, self.Ym, self.Yv = s["Y"]
        self.identity = torch.ones_like(self.Yb)
        gamma = self.gamma
        self.Pw = gamma * self.h
        if optimizer.hessian == "diagonal":
            self.diagonal = Tensors(hessian_diagonal(step.hvp, blocks.structure))
            self.hess_Pw = self.diagonal * self.Pw
        else:
            self.diagonal, self.hess_Pw = None, ZERO
        pairs = [(self.h, g)]  # z_i = Σ_{b(j)=i} h_j g_j (M14)
        if optimizer.approximation != "L" and self.diagonal is not None:
            pairs.append((self.diagonal * self.h, self.Pw))  # Hᵀ∇²f P_w, diagonal
        if self.q is not None:
            pairs.append((g, gamma * self.q))  # L_t P_h = Σ_k g_k Q[(i, k), i]
        sums = blocks.sums(pairs)
        self.z = sums[0]
        self.dz = sum(sums[1:], ZERO) if optimizer.approximation != "L" else ZERO

    @staticmethod
    def rows(x):
        """A meta partial scaling a diagonal block, held as its m-vector."""
        return x

    @staticmethod
    def store_Y(Y_beta, Y_m, Y_v):
        return [Y_beta, Y_m, Y_v]

    def base_rows(self, base, alpha, dalpha, d2alpha, kappa, w, forcing, B, C, full):
        gamma, expand, structure = self.gamma, self.blocks.expand, self.blocks.structure
        Pw, Pm, Pv, hess_Pw = self.Pw, gamma * self.xm, gamma * self.xv, self.hess_Pw
        decay = None
        if self.optimizer.clip_decay:  # IDBD's (1 − α a²)⁺ on the diagonal of ∂w'/∂w
            decay = _positive_part(1 - kappa * alpha - alpha * base.D_g * self.diagonal)
        h = _h_row(base, alpha, kappa, forcing * expand(B), Pw, Pm, Pv, hess_Pw, decay)
        xm = base.m_g * hess_Pw + base.m_m * Pm
        xv = base.v_g * hess_Pw + base.v_v * Pv
        X = [_materialise(x, structure) for x in (h, xm, xv)]
        if not full:
            return X, None
        C_b = expand(C)  # full is Hessian-free here: no ∇²f or ∇³f term
        d = _Direction(base, dalpha, d2alpha, C_b, Pw, Pm, Pv, ZERO)
        q = _q_entry(base, alpha, dalpha, kappa, w, gamma, d, C_b, self.h, self.xm, self.xv, ZERO, gamma * self.q, ZERO)
        return X, [_materialise(q, structure)]


class _DenseRows:
    """One step's traces in the dense form (hessian = exact): m columns of H, X^m, X^v and m × m of Q, each
    per weight; Y a 3m × m matrix; ∇²f and ∇³f as the observation's products."""

    def __init__(self, optimizer, s, step, blocks, g):
        self.optimizer, self.blocks, self.gamma, self.step = optimizer, blocks, optimizer.gamma, step
        m, gamma = blocks.m, optimizer.gamma
        self.H, self.Xm, self.Xv = ([Tensors(column) for column in block] for block in s["X"])
        Y = s["Y"]
        self.Yb, self.Ym, self.Yv = Y[:m], Y[m : 2 * m], Y[2 * m :]
        self.identity = torch.eye(m, dtype=Y.dtype, device=Y.device)
        self.hess_H = [self.hess(H_j) for H_j in self.H]
        self.Pw = [gamma * H_j for H_j in self.H]
        self.hess_Pw = [gamma * x for x in self.hess_H]
        full = optimizer.approximation == "full"
        self.Q = [[Tensors(c) for c in block] for block in s["Q"]] if full else None
        pairs = [(H_j, g) for H_j in self.H]  # z_j = Σ_k H_{k,j} g_k (M14)
        if optimizer.approximation != "L":
            pairs += [(hess_H_i, Pw_j) for hess_H_i in self.hess_H for Pw_j in self.Pw]  # Hᵀ∇²f P_w
        if full:
            pairs += [(g, gamma * Q_ij) for block in self.Q for Q_ij in block]  # L_t P_h
        sums = _column_sums(pairs)
        self.z = sums[:m]
        self.dz = ZERO
        if optimizer.approximation != "L":
            self.dz = sums[m : m + m * m].reshape(m, m)
            if full:
                self.dz = self.dz + sums[m + m * m :].reshape(m, m)

    def hess(self, u: Tensors) -> Tensors:
        return Tensors(self.step.hvp(u.items))

    @staticmethod
    def rows(x):
        """A meta partial (an m-vector) scaling the rows of an m × m block."""
        return x[:, None] if isinstance(x, torch.Tensor) else x

    @staticmethod
    def store_Y(Y_beta, Y_m, Y_v):
        return torch.cat([Y_beta, Y_m, Y_v])

    def base_rows(self, base, alpha, dalpha, d2alpha, kappa, w, forcing, B, C, full):
        gamma, expand, structure = self.gamma, self.blocks.expand, self.blocks.structure
        m = self.blocks.m
        Pm = [gamma * x for x in self.Xm]
        Pv = [gamma * x for x in self.Xv]
        H, Xm, Xv = [], [], []
        for j in range(m):
            forced = forcing * expand(B[:, j])
            H.append(_h_row(base, alpha, kappa, forced, self.Pw[j], Pm[j], Pv[j], self.hess_Pw[j], None))
            Xm.append(base.m_g * self.hess_Pw[j] + base.m_m * Pm[j])
            Xv.append(base.v_g * self.hess_Pw[j] + base.v_v * Pv[j])
        X = [[_materialise(x, structure) for x in block] for block in (H, Xm, Xv)]
        if not full:
            return X, None
        third = self.step.third
        C_b = [expand(C[:, i]) for i in range(m)]
        Q = [[None] * m for _ in range(m)]
        for j in range(m):  # the direction: column j of P
            d = _Direction(base, dalpha, d2alpha, C_b[j], self.Pw[j], Pm[j], Pv[j], self.hess_Pw[j])
            for i in range(m):  # column i of H
                dH_i = gamma * self.Q[i][j]
                d_hess_H_i = self.hess(dH_i) + Tensors(third(self.H[i].items, d.dw.items))
                column = (C_b[i], self.H[i], self.Xm[i], self.Xv[i], self.hess_H[i], dH_i, d_hess_H_i)
                Q[i][j] = _materialise(_q_entry(base, alpha, dalpha, kappa, w, gamma, d, *column), structure)
        return X, Q


# --------------------------------------------------------------------------- constructor (the spec's signature)


def _blocks_to_host(blocks):
    """Block ids as a host float64 array, through the backend's tensor conversion (and its errors)."""
    (ids,), _ = as_tensors("blocks", [blocks], HyperparameterError, torch.float64, "cpu")
    return ids.numpy()


def _check_blocks(blocks):
    """'scalar', 'weightwise', or integer block ids 0…m−1 (each used), one per weight: a CPU long tensor."""
    partition = host.block_partition(blocks, _blocks_to_host)
    return partition if isinstance(partition, str) else torch.tensor(partition)


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
    dtype=torch.float64,
    device="cpu",
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
    return MetaOptimize(dtype, device, needs, blocks=_check_blocks(blocks), clip_decay=clip_decay, **hp)


# --------------------------------------------------------------------------- the fast path (spec/backends.md#compiled)
# Hessian-free MetaOptimize in the paper's convention, 2x2 or L, with scalar step sizes: the traces are
# row-sparse and every meta quantity is one number, so a step is the round z = Σ h g, the meta update and the
# Y rows on 1-vectors (the eager code above, on the device), then one pass per tensor: the base update, Δw
# (M3), and h, x^m, x^v (M17) with ∇²f = 0, each weight read and written once. Other configurations run
# eagerly. Each base below is its cell of (M4)–(M8) written out for the pass (the eager cells memoise their
# partials, which torch.compile cannot trace): the new m and v (None: unchanged), D, D_m and D_v (None: zero),
# and ∂m'/∂m, ∂v'/∂v.


def _sgd_base(g, m, v, hp):  # (M4)
    return None, None, g, None, None, 1.0, 1.0


def _sgdm_base(g, m, v, hp):  # (M5)
    rho = hp[0]
    new_m = rho * m + (1 - rho) * g
    return new_m, None, new_m, rho, None, rho, 1.0


def _lion_base(g, m, v, hp):  # (M7): D from the old m
    rho, _, c = hp[:3]
    return rho * m + (1 - rho) * g, None, torch.sign(c * m + (1 - c) * g), None, None, rho, 1.0


def _normalised(a, s, eps):
    """N(a, s) = a/(√s + ε) (M2), with 1/q = N_a and N_s (0 where s = 0), as ``_Normalised`` forms them."""
    r = torch.sqrt(s)
    q = r + eps
    return a / q, 1 / q, torch.where(r > 0, -a / (2 * r * q**2), 0.0)


def _rmsprop_base(g, m, v, hp):  # (M6)
    lam, eps = hp[1], hp[3]
    new_v = lam * v + (1 - lam) * g * g
    D, _, N_s = _normalised(g, new_v, eps)
    return None, new_v, D, None, N_s * lam, 1.0, lam


def _adamw_base(g, m, v, hp):  # (M8)
    rho, lam, _, eps, bias1, bias2, rho_bias1, lam_bias2 = hp
    new_m = rho * m + (1 - rho) * g
    new_v = lam * v + (1 - lam) * g * g
    D, N_a, N_s = _normalised(new_m / bias1, new_v / bias2, eps)
    return new_m, new_v, D, N_a * rho_bias1, N_s * lam_bias2, rho, lam


_BASES = {"sgd": _sgd_base, "sgdm": _sgdm_base, "lion": _lion_base, "rmsprop": _rmsprop_base, "adamw": _adamw_base}


def _metaoptimize_pass(base_name: str, decayed: bool):
    """One tensor's step for ``base_name``: (θ, g, m, v, h, δ, [x^m, x^v], [w], s), x^m and x^v left out where they
    are known to be zero (``_trace_columns``), w the observed parameters when κ ≠ 0 (``decayed``)."""
    base = _BASES[base_name]

    def step(theta, g, m, v, h, delta, *rest):
        *traces, s = rest
        w = traces.pop() if decayed else None
        alpha, dalpha, B, gamma, kappa, *hp = s
        new_m, new_v, D, D_m, D_v, m_m, v_v = base(g, m, v, hp)
        Pw = gamma * h  # (M15) P = γX
        if decayed:
            d = -alpha * D - kappa * alpha * w  # (M3)
            h_new = -(D + kappa * w) * dalpha * B + (Pw - kappa * alpha * Pw)  # (M17) ∂w'/∂β B + ∂w'/∂w P_w
        else:
            d = -alpha * D
            h_new = -D * dalpha * B + Pw
        if traces:
            xm, xv = traces
            Pm, Pv = gamma * xm, gamma * xv
            if D_m is not None:
                h_new = h_new - alpha * D_m * Pm
            if D_v is not None:
                h_new = h_new - alpha * D_v * Pv
            xm.copy_(m_m * Pm)  # (M17) X^m' = [m_m] P_m, ∇²f = 0
            xv.copy_(v_v * Pv)
        h.copy_(h_new)
        if new_m is not None:
            m.copy_(new_m)
        if new_v is not None:
            v.copy_(new_v)
        delta.copy_(d)
        theta.copy_(theta + d)

    step.__name__ = step.__qualname__ = f"_metaoptimize_{base_name}" + ("_decayed" if decayed else "")
    return step


_ZERO_AT = WeakIdKeyDictionary()
"""x^m and x^v tensors known to be zero → the version (``Tensor._version``) they had then. Hessian-free, X^m' =
∂m'/∂m γX^m stays zero from X_0 = 0, and the pass that leaves them out does not write them; any other write
bumps the version, and the tensor is checked again."""


def _known_zero(tensors: list[torch.Tensor]) -> bool:
    """Whether every tensor is zero: from ``_ZERO_AT``, or one min-max pass and one host read over those not
    known (a run's first step; every step for traces an ``init`` override made non-zero)."""
    unknown = [t for t in tensors if t.numel() and _ZERO_AT.get(t) != t._version]
    if unknown:
        extremes = torch.stack([torch.stack(torch.aminmax(t)) for t in unknown])
        if bool(torch.any(extremes != 0)):
            return False
        for t in unknown:
            _ZERO_AT[t] = t._version
    return True


def _trace_columns(state) -> list:
    """The pass's state: m, v, h, δ, and x^m, x^v unless they are zero — then their terms in h' vanish and the
    pass neither reads nor writes them (4 of its 14 reads and writes per weight)."""
    s = state.stored
    h, xm, xv = s["X"]
    return [s["m"], s["v"], h, s["delta"], *(() if _known_zero([*xm, *xv]) else (xm, xv))]


_PASSES = {(name, decayed): _metaoptimize_pass(name, decayed) for name in _BASES for decayed in (False, True)}


def _z_sum(h, g):
    """One tensor's share of z = Hᵀg (M14), the entries of H in column b(j) = 0 being h."""
    return (h * g).sum().reshape(1)


def _metaoptimize_scalars(optimizer, state, step, params, compile):
    """The round z = Σ h g, then F's meta part as the eager step computes it, on the device; returns the
    pass's scalars: α, σ'(β), B (C or Y'^β) as 0-d tensors, γ, κ and the base's constants."""
    s = state.stored
    t = s["step"] + 1
    h = s["X"][0]
    z = reduce_sum(_fused.partial_sums(_z_sum, [h, step.grad], compile)) if h else torch.zeros_like(s["beta"])
    meta = _meta_cell(optimizer.meta, s["beta"], s["meta_m"], s["meta_v"], z, t, optimizer.hyperparameters, False)
    meta_first = optimizer.order == "meta_first"
    alpha, dalpha, _ = _sigma(optimizer.sigma, meta.beta if meta_first else s["beta"])  # (M19)
    identity = torch.ones_like(s["Y"][0])
    Y_beta, Y_m, Y_v, C = _meta_rows(meta, s["Y"], identity, _RowSparseRows.rows, ZERO, optimizer.gamma, False)
    B = Y_beta if meta_first else C
    s.update(step=t, beta=meta.beta, alpha=alpha, meta_m=meta.m, meta_v=meta.v, Y=[Y_beta, Y_m, Y_v])
    k = host.moment_constants(optimizer.rho, optimizer.lam, t)
    return (
        alpha.reshape(()),
        dalpha.reshape(()) if isinstance(dalpha, torch.Tensor) else dalpha,
        B.reshape(()),
        optimizer.gamma,
        optimizer.kappa,
        *(optimizer.rho, optimizer.lam, optimizer.c, optimizer.eps),
        *(k["bias1"], k["bias2"], k["rho_bias1"], k["lam_bias2"]),
    )


def _has_pass(optimizer) -> bool:
    return (
        optimizer.hessian == "free"
        and optimizer.approximation != "full"
        and optimizer.convention == "paper"
        and isinstance(optimizer.blocks, str)
        and optimizer.blocks == "scalar"
    )


KERNELS: dict[str, _fused.Kernel] = {
    "metaoptimize": _fused.Kernel(
        (),
        _metaoptimize_scalars,
        _PASSES["adamw", False],  # the benchmark's; ``select`` picks each optimizer's
        state_columns=_trace_columns,
        reduces=True,
        applies=_has_pass,
        observed=("params",),
        select=lambda optimizer: _PASSES[optimizer.base, bool(optimizer.kappa)],
    ),
}
"""Algorithm id → its fast path (``_fused``)."""
