"""RLLC, LM-RLLC and fixed-law linear memory in jax, spec/rllc.md (tags R1–R6), over parameter pytrees.

The memory M (n × k) is ``Columns(1)``: one pytree whose leaves carry the k units first, (k, *leaf.shape), so
the memory update (R4) and the learning step (R2) are elementwise passes per leaf. The law step (R1) needs
M_ε⁺g, a k×k problem: its data, the Gram matrix MᵀM and Mᵀg, are per-leaf partial sums combined in one
``reduce_sum`` round, and the relaxed inverse (R3) is solved on the device from the Gram matrix's
eigendecomposition, its rank decided by ``jnp.where``. Float32 cannot hold (R3c)'s cut-off in a Gram matrix
and takes a second round over the memory rotated into its eigenbasis (``_rotated_step``). A propagator
(B, a) is a hyperparameter: its values are traced scalars, its structure (which entries of B are non-zero,
so which units a unit reads) is compiled in. Written from the spec page; the NumPy reference is not called.

``rllc``'s memory rule U(M, H, g) is traced into the compiled F: it must be a jax-traceable function of the
flat (n, k) memory, the hidden state H (a pytree of arrays) and the flat (n,) gradient, with no Python
control flow on their values. The rule object is compiled in (one compilation per rule); H is a pytree in
the state, so a rule with a hidden state runs compiled like any other field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ...errors import HyperparameterError
from .. import _hyperparameters as checked
from ._core import DTYPES, WHOLE, Columns, Layout, Optimizer, Structure, reduce_sum

MEMORY = Columns(1)

_UNTRACEABLE = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)
"""What tracing a rule that computes on the host, or branches on values, raises."""


class HiddenState(Layout):
    """A memory rule's hidden state H: any pytree of arrays, stored and shown as it is (its leaves as arrays of
    the working precision, so the compiled F takes it like any other field)."""

    def flat(self, stored, structure):
        return stored

    def store(self, name, value, structure, default=None):
        return _as_hidden(value)


def _as_hidden(value):
    """H as a pytree of jax arrays (Python floats become 0-d arrays); call inside ``precision``."""
    return jax.tree_util.tree_map(jnp.asarray, value)


# --------------------------------------------------------------------------- the law step (R1, R3)


def _gram_partial(units: jax.Array, grad: jax.Array | None = None) -> jax.Array:
    """One leaf's share of MᵀM, (k, k), or of [MᵀM | Mᵀg], (k, k + 1): contractions over the leaf's entries."""
    columns = jnp.reshape(units, (units.shape[0], -1))
    gram = columns @ columns.T
    return gram if grad is None else jnp.concatenate([gram, (columns @ jnp.ravel(grad))[:, None]], axis=1)


def relaxed_inverse_step(memory, grad, eps) -> jax.Array:
    """M_ε⁺g (R3) of the memory pytree ``memory`` (leaves (k, *shape)) and the gradient pytree, (k,).

    For ε = 0 the exact M⁺g (R3a), otherwise Tikhonov (R3b), (MᵀM + εI)⁻¹Mᵀg over the right singular vectors
    whose σ is kept; a σ at or below √(n·k)·u·σ_max counts as zero (R3c), u the machine epsilon of the working
    precision. The eigenvalues of a Gram matrix held in precision u are its round-off below about u·σ_max²:
    float64 resolves (R3c)'s cut-off that way up to κ(M)² ≈ 1/(max(n, k)·u), float32 does not, so float32
    takes a second round (``_rotated_step``). The branch is the working precision, known when tracing.
    """
    units, grads = jax.tree_util.tree_leaves(memory), jax.tree_util.tree_leaves(grad)
    k, n = units[0].shape[0], sum(g.size for g in grads)
    u = float(jnp.finfo(units[0].dtype).eps)
    if units[0].dtype == jnp.float32:
        return _rotated_step(units, grads, eps, n * k * u * u)
    reduced = reduce_sum([_gram_partial(m, g) for m, g in zip(units, grads)])
    eigenvalues, V = jnp.linalg.eigh(reduced[:, :k], symmetrize_input=True)
    # with MᵀM = V diag(σ²) Vᵀ, M_ε⁺g = V diag(1/(σ² + ε)) Vᵀ Mᵀg; eigenvalues under max(n, k)·u·σ_max² are round-off
    kept = eigenvalues > max(n * k * u * u, max(n, k) * u) * jnp.max(eigenvalues)
    coefficients = jnp.where(kept, 1.0 / jnp.where(kept, eigenvalues + eps, 1.0), 0.0)
    return V @ (coefficients * (V.T @ reduced[:, k]))


def _rotated_step(units, grads, eps, relative_cutoff_squared) -> jax.Array:
    """M_ε⁺g in two reduction rounds, for a working precision whose Gram matrix cannot resolve (R3c)'s cut-off.

    Round 1: MᵀM and its eigenvectors V (descending eigenvalues), accurate to an angle of about u. Round 2:
    the rotated memory Y = M V (its columns nearly orthogonal, each computed to u·σ_max absolute) gives YᵀY
    and Yᵀg directly, so a small σ is now held relative to itself, not to σ_max². The Schur complements of
    YᵀY in that order (a Cholesky factorisation; graded, so each pivot is accurate to its own size) are the
    squared σ up to the small remaining rotation: a pivot at or below the cut-off² · the first drops its
    direction. The kept block of (YᵀY + εI) x = Yᵀg is solved after scaling to unit diagonal (condition near
    1), and M_ε⁺g = V x.
    """
    k = units[0].shape[0]
    _, V = jnp.linalg.eigh(reduce_sum([_gram_partial(m) for m in units]), symmetrize_input=True)
    V = V[:, ::-1]
    rotated = [jnp.tensordot(V.T, m, axes=1) for m in units]
    reduced = reduce_sum([_gram_partial(y, g) for y, g in zip(rotated, grads)])
    A, b = reduced[:, :k], reduced[:, k]
    kept = _kept_pivots(A, relative_cutoff_squared)
    both = kept[:, None] & kept[None, :]
    system = jnp.where(both, A, 0.0) + jnp.diag(jnp.where(kept, eps, 1.0))
    scale = jnp.sqrt(jnp.diag(system))
    x = jnp.linalg.solve(system / (scale[:, None] * scale[None, :]), jnp.where(kept, b, 0.0) / scale) / scale
    return V @ x


def _kept_pivots(A: jax.Array, relative_cutoff_squared: float) -> jax.Array:
    """Which directions of the graded SPD matrix A (k×k) a Cholesky factorisation in order keeps: pivot j, the
    Schur complement of the kept directions before it, is kept when it exceeds relative_cutoff_squared · A_00.
    A dropped direction takes no part in later complements. Unrolled over the static k."""
    k = A.shape[0]
    rows, kept = [], []
    for j in range(k):
        pivot = A[j, j] - sum((row[j] * row[j] for row in rows), jnp.zeros((), A.dtype))
        keep = pivot > relative_cutoff_squared * A[0, 0]
        root = jnp.sqrt(jnp.where(keep, pivot, 1.0))
        coupling = A[j] - sum((row[j] * row for row in rows), jnp.zeros_like(A[j]))
        rows.append(jnp.where(keep, coupling / root, 0.0))
        kept.append(keep)
    return jnp.stack(kept)


# --------------------------------------------------------------------------- the memory and the learning step


def propagate(memory, grad, B, a, pattern):
    """(R4) M B + g aᵀ per leaf: unit j becomes a_j g + Σ_i B_ij m_i over the i with B_ij ≠ 0 (``pattern``)."""
    k = len(pattern)

    def unit(units, g, j):
        value = a[j] * g
        for i in range(k):
            if pattern[i][j]:
                value = value + B[i, j] * units[i]
        return value

    def leaf(units, g):
        return jnp.stack([unit(units, g, j) for j in range(k)])

    return jax.tree_util.tree_map(leaf, memory, grad)


def combine(memory, weights):
    """Σ_j weights_j m_j per leaf, a parameter-shaped pytree."""
    return jax.tree_util.tree_map(lambda units: jnp.tensordot(weights, units, axes=1), memory)


# --------------------------------------------------------------------------- the flat memory a rule sees


def _flat(memory, grad) -> tuple[jax.Array, jax.Array]:
    """The flat (n, k) memory and (n,) gradient that Def. 3.2's U(M, H, g) takes (one leaf: a transpose)."""
    units, grads = jax.tree_util.tree_leaves(memory), jax.tree_util.tree_leaves(grad)
    k = units[0].shape[0]
    M = jnp.concatenate([jnp.reshape(m, (k, -1)) for m in units], axis=1).T
    return M, jnp.concatenate([jnp.ravel(g) for g in grads])


def _split(M: jax.Array, memory):
    """The flat (n, k) memory as a pytree like ``memory``."""
    units, treedef = jax.tree_util.tree_flatten(memory)
    offsets = np.cumsum([0, *(m[0].size for m in units)])
    return jax.tree_util.tree_unflatten(
        treedef, [M[a:b].T.reshape(m.shape) for a, b, m in zip(offsets, offsets[1:], units)]
    )


# --------------------------------------------------------------------------- optimizers


class LinearMemoryState(NamedTuple):
    M: tuple


class LinearMemory(Optimizer):
    algo = "linear_memory"
    layouts = {"M": MEMORY}
    StateTree = LinearMemoryState

    def initial_state(self, structure):
        return LinearMemoryState(M=_zero_memory(structure, len(self.a)))

    def scalars(self):
        return self.as_scalars(B=self.B, a=self.a, L=self.L)

    def static(self):
        return (_pattern(self.B),)

    @staticmethod
    def step_F(scalars, static, state, step):
        (pattern,) = static
        (memory,) = state.M
        return LinearMemoryState(M=(propagate(memory, step.grad, scalars["B"], scalars["a"], pattern),))  # (R4)

    @staticmethod
    def step_G(scalars, static, state, step):
        return combine(state.M[0], -scalars["L"])  # (R6) −M_t L, no c1


class LMRLLCState(NamedTuple):
    M: tuple
    L: jax.Array


class LMRLLC(Optimizer):
    algo = "lm_rllc"
    layouts = {"M": MEMORY, "L": WHOLE}
    StateTree = LMRLLCState

    def initial_state(self, structure):
        return LMRLLCState(M=_zero_memory(structure, len(self.a)), L=self.as_scalars(L=self.L0)["L"])

    def scalars(self):
        return self.as_scalars(B=self.B, a=self.a, c1=self.c1, c2=self.c2, eps=self.eps)

    def static(self):
        return (_pattern(self.B),)

    @staticmethod
    def step_F(scalars, static, state, step):
        (pattern,) = static
        (memory,) = state.M
        s = scalars
        return LMRLLCState(
            M=(propagate(memory, step.grad, s["B"], s["a"], pattern),),  # (R4) M_t = M_{t-1} B + g_t aᵀ
            L=state.L + s["c2"] * relaxed_inverse_step(memory, step.grad, s["eps"]),  # (R1), from M_{t-1}
        )

    @staticmethod
    def step_G(scalars, static, state, step):
        return combine(state.M[0], -scalars["c1"] * state.L)  # (R2) −c1 M_t L_t


class RLLCState(NamedTuple):
    M: tuple
    H: object
    L: jax.Array
    rule_finite: jax.Array  # whether the rule's M' is finite, raised on by ``check_result``


class RLLC(Optimizer):
    algo = "rllc"
    layouts = {"M": MEMORY, "H": HiddenState(), "L": WHOLE}
    StateTree = RLLCState

    def initial_state(self, structure):
        return RLLCState(
            M=_zero_memory(structure, len(self.L0)),
            H=_as_hidden(self.H0),
            L=self.as_scalars(L=self.L0)["L"],
            rule_finite=jnp.asarray(True),
        )

    def scalars(self):
        return self.as_scalars(c1=self.c1, c2=self.c2, eps=self.eps)

    def static(self):
        return (_Compiled(self.rule),)

    def check_result(self, state, tree):
        if not bool(tree.rule_finite):
            raise HyperparameterError("rule", "returned a memory M' with non-finite entries")

    @staticmethod
    def step_F(scalars, static, state, step):
        rule = static[0].rule
        (memory,) = state.M
        M, g = _flat(memory, step.grad)
        try:
            new_M, H = rule(M, state.H, g)  # (R5) (M_t, H_t) = U(M_{t-1}, H_{t-1}, g_t), traced
        except _UNTRACEABLE as exc:
            raise HyperparameterError(
                "rule", f"must be a jax-traceable function of (M, H, g), without Python branches on values ({exc})"
            ) from None
        shape = tuple(getattr(new_M, "shape", ()))
        if shape != M.shape:
            raise HyperparameterError("rule", f"must return M of shape {M.shape}, got {shape}")
        new_M = jnp.asarray(new_M, M.dtype)
        return RLLCState(
            M=(_split(new_M, memory),),
            H=H,
            L=state.L + scalars["c2"] * relaxed_inverse_step(memory, step.grad, scalars["eps"]),  # (R1)
            rule_finite=jnp.all(jnp.isfinite(new_M)),
        )

    @staticmethod
    def step_G(scalars, static, state, step):
        return combine(state.M[0], -scalars["c1"] * state.L)  # (R2)


class _Compiled:
    """A rule as a static argument of the compiled F: equal only to itself, so any callable (one that defines
    ``__eq__`` without ``__hash__`` included) selects its own compilation."""

    def __init__(self, rule: Callable):
        self.rule = rule

    def __eq__(self, other):
        return isinstance(other, _Compiled) and other.rule is self.rule

    def __hash__(self):
        return id(self.rule)


def _zero_memory(structure: Structure, k: int) -> tuple:
    """M_0 = 0 with k units, as ``Columns(1)`` stores it."""
    return (structure.unflatten(jnp.zeros((k, *shape), DTYPES[structure.dtype]) for shape in structure.shapes),)


def _pattern(B: np.ndarray) -> tuple[tuple[bool, ...], ...]:
    """Which entries of B are non-zero: the propagator's structure, compiled in."""
    return tuple(tuple(bool(x != 0) for x in row) for row in B)


# --------------------------------------------------------------------------- constructors (the spec's signatures)


def rllc(rule: Callable, c1, c2, L0, eps=1e-8, H0=None, *, dtype="float64"):
    """RLLC of a jax-traceable memory rule U(M, H, g) -> (M', H') on the flat (n, k) memory, spec/rllc.md#rllc."""
    return RLLC(dtype, rule=rule, **checked.rllc(rule, c1, c2, L0, eps), H0=H0)


def lm_rllc(B, a, c1=1e-2, c2=1e-2, L0=None, eps=1e-8, *, dtype="float64"):
    """LM-RLLC F(B, a, c1, c2), spec/rllc.md#lm_rllc (Def. 5.1); L0 defaults to the unit-gain law."""
    return LMRLLC(dtype, **checked.lm_rllc(B, a, c1, c2, L0, eps))


def linear_memory(B, a, L, *, dtype="float64"):
    """The fixed-law optimizer L(B, a, L), spec/rllc.md#linear_memory (Sec. 4)."""
    return LinearMemory(dtype, **checked.linear_memory(B, a, L))
