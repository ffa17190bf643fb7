"""IDBD (Sutton 1992) and its non-linear extension, spec/idbd.md (tags I1–I10), in jax over parameter pytrees
(``_core.Optimizer``). Written from the spec page; the NumPy reference is not called.

Both take n Hessian-vector products per step, as the spec defines them (IDBD's diagonal with the basis
vectors, the non-linear form's ∇²f 𝓗 one column at a time). They run in a ``lax.fori_loop`` / ``lax.map``
over the basis vectors or the columns, so the compiled program holds one product whatever n is; a host
observation's products go through the core's one ``pure_callback``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._core import DTYPES, PARAM, Columns, Optimizer, hyperparameters, reduce_sum


def _map(function, *trees):
    return jax.tree_util.tree_map(function, *trees)


def _offsets(tree) -> list[int]:
    """Where each leaf of ``tree`` starts in the spec's flat vector (``tree_leaves`` order)."""
    return [int(o) for o in np.cumsum([0, *(leaf.size for leaf in jax.tree_util.tree_leaves(tree))])[:-1]]


def _flat_positions(tree):
    """For each leaf, an int32 array of its shape holding each entry's index in the spec's flat vector."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    positions = [
        jnp.arange(leaf.size, dtype=jnp.int32).reshape(leaf.shape) + offset
        for leaf, offset in zip(leaves, _offsets(tree))
    ]
    return jax.tree_util.tree_unflatten(treedef, positions)


def hessian_diagonal(hvp, like):
    """diag ∇²f, a pytree shaped like ``like``, from n products with the basis vectors e_j (I2): a fori_loop
    over j, each pass keeping entry j of ∇²f e_j (exact for IDBD's linear unit, where it is x²)."""
    positions = _flat_positions(like)
    n = sum(leaf.size for leaf in jax.tree_util.tree_leaves(like))

    def accumulate(j, diagonal):
        basis = _map(lambda p, x: (p == j).astype(x.dtype), positions, like)
        product = hvp(basis)
        return _map(lambda d, p, hv: jnp.where(p == j, hv, d), diagonal, positions, product)

    return lax.fori_loop(0, n, accumulate, _map(jnp.zeros_like, like))


def _step_sizes(structure, alpha0) -> dict:
    """β_0 = log α₀ and α₀ for every weight."""
    dtype = DTYPES[structure.dtype]
    alpha0 = jnp.asarray(alpha0, dtype)
    return {
        "beta": structure.unflatten(jnp.full(s, jnp.log(alpha0), dtype) for s in structure.shapes),
        "alpha": structure.unflatten(jnp.full(s, alpha0, dtype) for s in structure.shapes),
    }


# --------------------------------------------------------------------------- IDBD


class IDBDState(NamedTuple):
    beta: object
    alpha: object
    h: object


class IDBD(Optimizer):
    algo = "idbd"
    layouts = {"beta": PARAM, "alpha": PARAM, "h": PARAM}
    StateTree = IDBDState

    def initial_state(self, structure):
        return IDBDState(**_step_sizes(structure, self.alpha0), h=structure.zeros())

    def scalars(self):
        return self.as_scalars(eta=self.eta)

    @staticmethod
    def step_F(scalars, static, state, step):
        g = step.grad  # (I1) g = ∇f = −δx for the linear unit
        x2 = hessian_diagonal(step.hvp, g)  # (I2) x_i² = diag ∇²f
        eta = scalars["eta"]
        beta = _map(lambda b, g, h: b - eta * g * h, state.beta, g, state.h)  # (I3) with the old h
        alpha = _map(jnp.exp, beta)  # (I4), used by (I5) and (I6)
        # (I6) h_i ← h_i [1 − α_i x_i²]⁺ − α_i g_i: the decay factor is clipped, not h
        h = _map(lambda h, a, x2, g: h * jnp.maximum(1 - a * x2, 0) - a * g, state.h, alpha, x2, g)
        return IDBDState(beta=beta, alpha=alpha, h=h)

    @staticmethod
    def step_G(scalars, static, state, step):
        return _map(lambda a, g: -a * g, state.alpha, step.grad)  # (I5) with the new α of S_t


# --------------------------------------------------------------------------- IDBD, non-linear


class IDBDNonlinearState(NamedTuple):
    beta: object
    alpha: object
    H: tuple


class IDBDNonlinear(Optimizer):
    """𝓗 (n × n) is ``Columns(1)``: leaf k of its one block holds (n, *leaf_k.shape), column j first, so
    𝓗ᵀ∇f is a per-leaf contraction and ∇²f 𝓗 a ``lax.map`` of the product over the columns."""

    algo = "idbd_nonlinear"
    layouts = {"beta": PARAM, "alpha": PARAM, "H": Columns(1)}
    StateTree = IDBDNonlinearState

    def initial_state(self, structure):
        dtype = DTYPES[structure.dtype]
        columns = structure.unflatten(jnp.zeros((structure.n, *s), dtype) for s in structure.shapes)
        return IDBDNonlinearState(**_step_sizes(structure, self.alpha0), H=(columns,))

    def scalars(self):
        return self.as_scalars(eta=self.eta)

    @staticmethod
    def step_F(scalars, static, state, step):
        g, (columns,) = step.grad, state.H
        # (I7) β_{t+1} = β_t − η 𝓗ᵀ∇f: z_j = Σ_k 𝓗_{kj} g_k, per-leaf partial sums, the step's one reduction
        partials = [
            jnp.tensordot(c, x, axes=x.ndim)
            for c, x in zip(jax.tree_util.tree_leaves(columns), jax.tree_util.tree_leaves(g))
        ]
        z = reduce_sum(partials) if partials else None  # an empty pytree has no columns
        z_tree = _map(lambda x, o: z[o : o + x.size].reshape(x.shape), g, _tree_offsets(g))
        beta = _map(lambda b, z: b - scalars["eta"] * z, state.beta, z_tree)
        alpha = _map(jnp.exp, beta)  # (I8)
        hess_columns = lax.map(step.hvp, columns)  # ∇²f 𝓗, one product per column
        # (I10) 𝓗' = (I − [α]∇²f)𝓗 − [α∇f]: row k scaled by α_k; column j gets −α_j g_j in row j
        new = _map(lambda c, a, hc: c - a * hc, columns, alpha, hess_columns)
        new = _map(_subtract_diagonal, new, _map(lambda a, g: a * g, alpha, g), _tree_offsets(g))
        return IDBDNonlinearState(beta=beta, alpha=alpha, H=(new,))

    @staticmethod
    def step_G(scalars, static, state, step):
        return _map(lambda a, g: -a * g, state.alpha, step.grad)  # (I9) −α_{t+1}∇f_t, α of S_t


def _tree_offsets(tree):
    """The leaves' flat offsets as a pytree of Python ints shaped like ``tree`` (static under tracing)."""
    treedef = jax.tree_util.tree_structure(tree)
    return jax.tree_util.tree_unflatten(treedef, _offsets(tree))


def _subtract_diagonal(columns_leaf, forcing_leaf, offset: int):
    """``columns_leaf`` (n, *shape) less ``forcing_leaf`` on its diagonal: entry i of the leaf in column
    offset + i, a scatter of the leaf's size."""
    n, size = columns_leaf.shape[0], forcing_leaf.size
    rows = jnp.arange(size)
    flat = columns_leaf.reshape(n, size).at[offset + rows, rows].add(-forcing_leaf.reshape(size))
    return flat.reshape(columns_leaf.shape)


# --------------------------------------------------------------------------- constructors (the spec's signatures)


def idbd(alpha0=0.05, eta=0.01, *, dtype="float64"):
    """IDBD (spec/idbd.md#idbd): weight-wise exponential step sizes; observes ``grad`` and ``hvp``."""
    return IDBD(dtype, needs=frozenset({"grad", "hvp"}), **hyperparameters("idbd", alpha0=alpha0, eta=eta))


def idbd_nonlinear(alpha0=0.05, eta=0.01, *, dtype="float64"):
    """IDBD for non-linear losses (spec/idbd.md#idbd_nonlinear): exact Hessian, no clipping; 𝓗 is n columns
    over the parameters and a step takes n Hessian-vector products."""
    hp = hyperparameters("idbd_nonlinear", alpha0=alpha0, eta=eta)
    return IDBDNonlinear(dtype, needs=frozenset({"grad", "hvp"}), **hp)
