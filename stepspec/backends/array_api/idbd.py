"""IDBD (Sutton 1992) and its non-linear extension on the array API, spec/idbd.md (tags I1–I10). Written from
the spec page; the reference is not called.

Per step, for n weights:

- ``idbd``: n Hessian-vector products with the basis vectors for x² = diag ∇²f (I2), then one elementwise pass
  per parameter (β, α, h, and θ in ``step``). No reduction. Host reads: the finite checks of g and of each
  product's result (n + 1; one more for θ in ``step``).
- ``idbd_nonlinear``: one reduction round, z = 𝓗ᵀ∇f (I7) as per-parameter (n,) partials; n products ∇²f 𝓗,
  one per column of 𝓗 (I10); two elementwise passes per parameter, one for β and α (and θ in ``step``), one
  for 𝓗's (n, *shape) block, which reads the products stacked into blocks of that shape and a 0/1 block
  marking 𝓗's diagonal (temporaries of 𝓗's size, for the step only). Host reads: the finite checks of g and
  of the n products (n + 1; one more for θ in ``step``).

The n products are the algorithms' own cost (the spec's exact diagonal and exact Hessian, for the small units
IDBD is defined on). Every array stays in the working precision: β, α and h are entrywise, and 𝓗ᵀ∇f is one
inner product per column, so float32 holds the suite's tolerance without a float64 accumulator.
"""

from __future__ import annotations

import math

import numpy as np

from ._core import PARAM, Columns, Optimizer, Structure, hyperparameters, over_leaves

# --------------------------------------------------------------------------- the elementwise passes


def _pass_idbd_state(xp):
    def state(beta, h, g, x2, eta):
        beta = beta - eta * g * h  # (I3) β_i ← β_i − θ g_i h_i, with the old h
        alpha = xp.exp(beta)  # (I4) the new α, used by (I5) and (I6)
        return beta, alpha, h * xp.maximum(1 - alpha * x2, 0.0) - alpha * g  # (I6) the decay factor clipped at 0

    return state


def _pass_idbd_step(xp):
    def step(theta, beta, h, g, x2, eta):
        beta = beta - eta * g * h  # (I3)
        alpha = xp.exp(beta)  # (I4)
        h = h * xp.maximum(1 - alpha * x2, 0.0) - alpha * g  # (I6)
        return beta, alpha, h, theta - alpha * g  # (I5) with the new α

    return step


def _pass_log_step_sizes(xp):
    def step_sizes(beta, z, eta):
        beta = beta - eta * z  # (I7) β_{t+1} = β_t − η (𝓗ᵀ∇f)
        return beta, xp.exp(beta)  # (I8)

    return step_sizes


def _pass_log_step_sizes_step(xp):
    def step(theta, beta, z, g, eta):
        beta = beta - eta * z  # (I7)
        alpha = xp.exp(beta)  # (I8)
        return beta, alpha, theta - alpha * g  # (I9) with α_{t+1}

    return step


def _pass_trace(xp):
    # (I10) 𝓗' = 𝓗 − [α]∇²f 𝓗 − [α∇f], on a parameter's (n, *shape) block: α and g broadcast over the n
    # columns, and ``diagonal`` is 1 where column j meets its own weight's row (the diagonal matrix [α∇f])
    return lambda trace, curvature, diagonal, alpha, g: trace - alpha * curvature - diagonal * (alpha * g)


def _pass_descent(xp):
    return lambda alpha, g: -alpha * g  # (I5, I9) −α⊙g with the α of S_t


# --------------------------------------------------------------------------- shared pieces


def _step_sizes(structure: Structure, alpha0: float) -> dict:
    """β_0 = log α₀ and α₀ for every weight, in the working precision."""
    ns = structure.ns

    def full(value):
        return [ns.xp.full(shape, value, dtype=ns.float, device=ns.device) for shape in structure.shapes]

    return {"beta": full(math.log(alpha0)), "alpha": full(float(alpha0))}


def _basis(structure: Structure, leaf: int, entry: int) -> list:
    """The basis vector of weight ``entry`` of parameter ``leaf``, as a fresh structure (the caller's product
    may keep its argument)."""
    ns, xp = structure.ns, structure.ns.xp
    vector = structure.zeros()
    size, shape = structure.sizes[leaf], structure.shapes[leaf]
    one_hot = xp.astype(xp.arange(size, device=ns.device) == entry, ns.float)
    vector[leaf] = xp.reshape(one_hot, shape)
    return vector


def hessian_diagonal(hvp, structure: Structure) -> list:
    """diag ∇²f, one array per parameter, from n products with the basis vectors (I2): entry (i, e) is entry e
    of parameter i of ∇²f e_{i,e}."""
    xp, diagonal = structure.ns.xp, []
    for leaf, (shape, size) in enumerate(zip(structure.shapes, structure.sizes)):
        if not size:
            diagonal.append(structure.ns.zeros(shape))
            continue
        entries = [xp.reshape(hvp(_basis(structure, leaf, entry))[leaf], (size,))[entry] for entry in range(size)]
        diagonal.append(xp.reshape(xp.stack(entries), shape))
    return diagonal


def _descent(optimizer: Optimizer, state, step) -> list:
    return over_leaves(optimizer.ns.fused(_pass_descent), [state.stored["alpha"], step.grad])


# --------------------------------------------------------------------------- optimizers


class IDBD(Optimizer):
    algo = "idbd"
    layouts = {"beta": PARAM, "alpha": PARAM, "h": PARAM}

    def initial_state(self, structure, params):
        return {**_step_sizes(structure, self.alpha0), "h": structure.zeros()}

    def _arrays(self, state, step) -> list:
        """β, h, g (I1: g = −δx for the linear unit) and x² (I2), the pass's arrays in its order."""
        s = state.stored
        return [s["beta"], s["h"], step.grad, hessian_diagonal(step.hvp, state.structure)]

    def _F(self, state, step):
        beta, alpha, h = over_leaves(self.ns.fused(_pass_idbd_state), self._arrays(state, step), self.eta, outputs=3)
        return {"beta": beta, "alpha": alpha, "h": h}

    def _G(self, state, step):
        return _descent(self, state, step)

    def _step(self, state, step, params):
        beta, alpha, h, theta = over_leaves(
            self.ns.fused(_pass_idbd_step), [params, *self._arrays(state, step)], self.eta, outputs=4
        )
        return {"beta": beta, "alpha": alpha, "h": h}, theta


class IDBDNonlinear(Optimizer):
    """𝓗 (n × n) is stored as n columns: per parameter i an array (n, *shape_i) whose entry [j, e] is row
    (offset_i + e), column j of 𝓗."""

    algo = "idbd_nonlinear"
    layouts = {"beta": PARAM, "alpha": PARAM, "H": Columns(1)}

    def initial_state(self, structure, params):
        n = structure.n
        return {**_step_sizes(structure, self.alpha0), "H": [[structure.ns.zeros((n, *s)) for s in structure.shapes]]}

    def _projected_gradient(self, state, step) -> list:
        """𝓗ᵀ∇f, one array per parameter: n inner products, one reduction round over the parameters."""
        xp, structure = self.ns.xp, state.structure
        n, blocks = structure.n, state.stored["H"][0]
        if not n:
            return structure.zeros()
        partials = [
            xp.vecdot(xp.reshape(block, (n, size)), xp.reshape(g, (size,)))
            for block, g, size in zip(blocks, step.grad, structure.sizes)
        ]
        return structure.split(self.ns.reduce_sum(partials))

    def _trace(self, state, step, alpha) -> list:
        """(I10) 𝓗_{t+1}, from the n products ∇²f 𝓗_t (one per column) and the new α."""
        xp, ns, structure = self.ns.xp, self.ns, state.structure
        n, blocks = structure.n, state.stored["H"][0]
        products = [step.hvp([block[j, ...] for block in blocks]) for j in range(n)]
        offsets = np.cumsum([0, *structure.sizes])
        curvature, diagonal = [], []
        for leaf, (shape, size) in enumerate(zip(structure.shapes, structure.sizes)):
            stacked = xp.stack([p[leaf] for p in products]) if n else ns.zeros((0, *shape))
            curvature.append(stacked)
            eye = xp.eye(n, size, k=-int(offsets[leaf]), dtype=ns.float, device=ns.device)
            diagonal.append(xp.reshape(eye, (n, *shape)))
        return over_leaves(ns.fused(_pass_trace), [blocks, curvature, diagonal, alpha, step.grad])

    def _F(self, state, step):
        z = self._projected_gradient(state, step)
        beta, alpha = over_leaves(self.ns.fused(_pass_log_step_sizes), [state.stored["beta"], z], self.eta, outputs=2)
        return {"beta": beta, "alpha": alpha, "H": [self._trace(state, step, alpha)]}

    def _G(self, state, step):
        return _descent(self, state, step)

    def _step(self, state, step, params):
        z = self._projected_gradient(state, step)
        beta, alpha, theta = over_leaves(
            self.ns.fused(_pass_log_step_sizes_step), [params, state.stored["beta"], z, step.grad], self.eta, outputs=3
        )
        return {"beta": beta, "alpha": alpha, "H": [self._trace(state, step, alpha)]}, theta


# --------------------------------------------------------------------------- constructors (the spec's signatures)


def idbd(alpha0=0.05, eta=0.01, *, ns):
    """IDBD (spec/idbd.md#idbd): weight-wise exponential step sizes; observes ``grad`` and ``hvp``."""
    hp = hyperparameters("idbd", alpha0=alpha0, eta=eta)
    return IDBD(ns, needs=frozenset({"grad", "hvp"}), **hp)


def idbd_nonlinear(alpha0=0.05, eta=0.01, *, ns):
    """IDBD for non-linear losses (spec/idbd.md#idbd_nonlinear): exact Hessian, no clipping; n products per
    step, one per column of the n × n trace 𝓗."""
    hp = hyperparameters("idbd_nonlinear", alpha0=alpha0, eta=eta)
    return IDBDNonlinear(ns, needs=frozenset({"grad", "hvp"}), **hp)
