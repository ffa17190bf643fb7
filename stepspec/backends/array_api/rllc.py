"""RLLC, LM-RLLC and fixed-law linear memory on the array API, spec/rllc.md (tags R1–R6), on parameter
structures. Written from the spec page and the torch backend's design; the reference is not called.

**Memory.** M (n × k) is ``Columns(1)``: one array (k, *shape) per parameter. The memory update (R4),
unit j ← a_j g + Σ_i B_ij m_i, is one elementwise pass per parameter that writes the whole (k, *shape) array:
each old unit m_i (a row of the stored array, a view) is broadcast against row i of B (its weight in each new
unit), held as a (k, 1) array of the working dtype, so no k separate units are written and stacked after. The
learning step (R2) θ + (−c1 Σ_j L_j m_j), or (R6) θ + (−Σ_j L_j m_j), is a second pass, unrolled over the k
units with the weights as scalars: 0-d device arrays −c1 L_t[j] for the adaptive laws, host floats for a fixed
one. One pass cannot do both, as its outputs share one shape and θ's is not the memory's; two passes read and
write less than one pass that writes k separate units plus the copy that stacks them.

**Law step (R1, R3).** M_{t-1,ε}⁺ g_t needs the k × (k + 1) matrix [MᵀM | Mᵀg]: per parameter, two products
of its (k, size) view with itself and with g, stacked into one (k, k + 1) partial; one ``reduce_sum`` round.
The relaxed inverse is solved on the device with ``xp.linalg.eigh`` of MᵀM = V diag(σ²) Vᵀ:
M_ε⁺g = V diag(1/(σ² + ε)) VᵀMᵀg over the kept σ, (R3a) for ε = 0 and (R3b) otherwise. On the device because
a host solve would read the k×k matrix back every step, the step's only synchronisation besides the core's
finite checks; the kept set is decided by ``xp.where``.

**Float32.** As in the torch backend (spec/rllc.md#backends), the Gram matrix and Mᵀg are accumulated, and
the eigenproblem solved, in float64 in every working precision (a product of float32 entries is exact in
float64): a float32 Gram matrix has eigenvalue round-off of order u·σ_max², which is far above (R3c)'s cut
in float32 and makes a rank-deficient memory's law step O(1) wrong. In float32 the memory is converted to
float64 for the products (a k·n temporary that dies with the step). A σ counts as zero at or below
√(n·k)·u·σ_max, u the working precision's machine epsilon (R3c), and at or below √(max(n, k)·2⁻⁵²)·σ_max,
below which the float64 Gram matrix's eigenvalues are round-off. L stays in the working precision.

**Per step**, lm_rllc: one reduction round, the k×k solve (device), the memory pass and the learning pass
(two elementwise passes per parameter in ``step``; F alone is the memory pass, G alone the learning pass).
linear_memory: the two passes, no reduction. rllc: the reduction round, the rule on the flat (n, k) memory
(joined from the parameters' arrays and split back), and the learning pass. Host reads: the core's finite
check of g (and of θ in ``step``); rllc's finite check of the rule's M'. None in lm_rllc's or linear_memory's
own work (cupy's ``eigh`` does not read its error flag under cupy's default ``linalg='ignore'``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ...errors import HyperparameterError
from .. import _hyperparameters as checked
from ._core import WHOLE, Columns, Layout, Optimizer, as_arrays, over_leaves

MEMORY = Columns(1)
GRAM_DTYPE = "float64"
"""The law step's Gram matrix and Mᵀg are accumulated and solved in float64 in every working precision."""


class AsReturned(Layout):
    """A memory rule's hidden state H: whatever the rule returns, stored and shown as it is."""

    def flat(self, stored, structure):
        return stored

    def store(self, name, value, structure, default):
        return value


# --------------------------------------------------------------------------- the elementwise passes


def _pass_propagate(xp):
    def propagate(g, a, *units_and_rows):
        """(R4) the new units (k, size) from g (size,), a (k, 1), the old units m_i (size,), then the rows
        B[i, :] as (k, 1): new unit j is a_j g + Σ_i B_ij m_i."""
        k = len(units_and_rows) // 2
        units, rows = units_and_rows[:k], units_and_rows[k:]
        new = a * g
        for unit, row in zip(units, rows):
            new = new + row * unit
        return new

    return propagate


def _weighted_sum(units_and_weights):
    k = len(units_and_weights) // 2
    units, weights = units_and_weights[:k], units_and_weights[k:]
    update = weights[0] * units[0]
    for unit, weight in zip(units[1:], weights[1:]):
        update = update + weight * unit
    return update


def _pass_learning_step(xp):
    return lambda *units_and_weights: _weighted_sum(units_and_weights)  # (R2) −c1 M_t L_t, (R6) −M_t L


def _pass_learning_step_applied(xp):
    return lambda theta, *units_and_weights: theta + _weighted_sum(units_and_weights)


# --------------------------------------------------------------------------- the law step (R1, R3)


def _flat_units(xp, leaf, size: int, k: int):
    """A parameter's (k, *shape) memory as its (k, size) view."""
    return xp.reshape(leaf, (k, size))


class _Memory(Optimizer):
    """What the three algorithms share: M_0 = 0 with k units, the memory pass, the learning pass."""

    @property
    def k(self) -> int:
        return len(self.a)

    @functools.cached_property
    def propagation(self) -> tuple:
        """a, then the rows of B (row i: the coefficients B_ij of m_i in each new unit j), as (k, 1) arrays of
        the working dtype on the device: the memory pass's coefficients, made once."""
        dtype = np.dtype(self.ns.dtype)
        return tuple(self.ns.asarray(v.astype(dtype).reshape(self.k, 1)) for v in (self.a, *self.B))

    def zero_memory(self, structure) -> list:
        return [[self.ns.zeros((self.k, *shape)) for shape in structure.shapes]]

    def propagate(self, state, grad) -> list:
        """(R4) M_{t-1} B + g_t aᵀ, one pass per parameter."""
        xp, k, structure = self.ns.xp, self.k, state.structure
        kernel = self.ns.fused(_pass_propagate)
        a, *rows = self.propagation
        new = []
        for leaf, g, size, shape in zip(state.stored["M"][0], grad, structure.sizes, structure.shapes):
            old = _flat_units(xp, leaf, size, k)
            units = [old[i, :] for i in range(k)]
            new.append(xp.reshape(kernel(xp.reshape(g, (size,)), a, *units, *rows), (k, *shape)))
        return [new]

    def weights(self, stored) -> list:
        """The learning step's per-unit weights (R2): −c1 L_t[j], 0-d arrays on the device."""
        w = -self.c1 * stored["L"]
        return [w[j] for j in range(self.k)]

    def learning_step(self, stored, params=None) -> list:
        """Σ_j w_j m_j per parameter from the memory in ``stored``; θ + it when ``params`` are given."""
        weights = self.weights(stored)
        units = [[leaf[j, ...] for leaf in stored["M"][0]] for j in range(self.k)]
        if params is None:
            return over_leaves(self.ns.fused(_pass_learning_step), units, *weights)
        return over_leaves(self.ns.fused(_pass_learning_step_applied), [params, *units], *weights)

    def _G(self, state, step):
        return self.learning_step(state.stored)

    def _step(self, state, step, params):
        changed = self._F(state, step)
        return changed, self.learning_step({**state.stored, **changed}, params)

    def law_update(self, state, grad):
        """(R1) L_t = L_{t-1} + c2 M_{t-1,ε}⁺ g_t from the memory before this step's update, one reduction round."""
        ns, xp, k, structure = self.ns, self.ns.xp, self.k, state.structure
        gram = getattr(xp, GRAM_DTYPE)
        partials = []
        for leaf, g, size in zip(state.stored["M"][0], grad, structure.sizes):
            units = xp.astype(_flat_units(xp, leaf, size, k), gram, copy=False)
            g = xp.astype(xp.reshape(g, (size,)), gram, copy=False)
            partials.append(xp.concat([units @ xp.matrix_transpose(units), (units @ g)[:, None]], axis=1))
        reduced = ns.reduce_sum(partials)
        step = relaxed_inverse_step(xp, reduced, k, structure.n, self.eps, ns.dtype)
        return state.stored["L"] + self.c2 * xp.astype(step, ns.float)


def relaxed_inverse_step(xp, reduced, k: int, n: int, eps: float, working: str):
    """M_ε⁺g (R3) from the reduced float64 [MᵀM | Mᵀg] (k, k + 1), as a float64 (k,) array on the device.

    With MᵀM = V diag(σ²) Vᵀ, M_ε⁺g = V diag(1/(σ² + ε)) VᵀMᵀg over the kept σ: for ε = 0 the exact M⁺g
    (R3a), otherwise Tikhonov (R3b). A σ is kept above √(n·k)·u·σ_max (R3c), u the working precision's
    machine epsilon, and above √(max(n, k)·2⁻⁵²)·σ_max, the float64 Gram matrix's eigenvalue round-off."""
    eigenvalues, V = xp.linalg.eigh(reduced[:, :k])
    relative_cutoff = max(n * k * float(np.finfo(working).eps) ** 2, max(n, k) * float(np.finfo(GRAM_DTYPE).eps))
    kept = eigenvalues > relative_cutoff * xp.max(eigenvalues)
    coefficients = xp.where(kept, 1.0 / xp.where(kept, eigenvalues + eps, 1.0), 0.0)
    return V @ (coefficients * (xp.matrix_transpose(V) @ reduced[:, k]))


# --------------------------------------------------------------------------- optimizers


class RLLC(_Memory):
    algo = "rllc"
    layouts = {"M": MEMORY, "H": AsReturned(), "L": WHOLE}

    @property
    def k(self) -> int:
        return len(self.L0)

    def initial_state(self, structure, params):
        return {"M": self.zero_memory(structure), "H": self.H0, "L": self.ns.asarray(self.L0.astype(self.ns.dtype))}

    def _F(self, state, step):
        structure = state.structure
        L = self.law_update(state, step.grad)  # (R1), from M_{t-1}
        M, H = self.rule(state.M, state.stored["H"], structure.join(step.grad))  # (R5) on the flat n × k memory
        return {"M": [MEMORY.split(self._checked_memory(M, structure), structure)], "H": H, "L": L}

    def _checked_memory(self, M, structure):
        """The rule's M' as a finite real (n, k) array of the working precision, or HyperparameterError naming
        ``rule`` (raised before a new state exists)."""
        shape = tuple(M.shape) if hasattr(M, "shape") else None
        if shape != (structure.n, self.k):
            raise HyperparameterError("rule", f"must return M of shape {(structure.n, self.k)}, got {shape}")
        (M,), _ = as_arrays("rule", [M], HyperparameterError, self.ns)
        return M


class LMRLLC(_Memory):
    algo = "lm_rllc"
    layouts = {"M": MEMORY, "L": WHOLE}

    def initial_state(self, structure, params):
        return {"M": self.zero_memory(structure), "L": self.ns.asarray(self.L0.astype(self.ns.dtype))}

    def _F(self, state, step):
        # (R1) from M_{t-1}, then (R4) M_t = M_{t-1} B + g_t aᵀ
        return {"L": self.law_update(state, step.grad), "M": self.propagate(state, step.grad)}


class LinearMemory(_Memory):
    algo = "linear_memory"
    layouts = {"M": MEMORY}

    def initial_state(self, structure, params):
        return {"M": self.zero_memory(structure)}

    def _F(self, state, step):
        return {"M": self.propagate(state, step.grad)}  # (R4)

    def weights(self, stored) -> list:
        return [-float(x) for x in self.L]  # (R6) −M_t L, no c1


# --------------------------------------------------------------------------- hyperparameters (host, at construction)


def _to_host(ns):
    """The namespace's arrays as host arrays for the shared checks (``_hyperparameters``); other values unchanged."""
    return lambda value: ns.to_numpy(value) if isinstance(value, ns.array_type) else value


# --------------------------------------------------------------------------- constructors (the spec's signatures)


def rllc(rule: Callable, c1, c2, L0, eps=1e-8, H0=None, *, ns):
    """RLLC of a memory rule U(M, H, g) -> (M', H') on the namespace's arrays: the flat (n, k) memory, H and
    the flat (n,) gradient; spec/rllc.md#rllc (Def. 3.2)."""
    return RLLC(ns, rule=rule, **checked.rllc(rule, c1, c2, L0, eps, _to_host(ns)), H0=H0)


def lm_rllc(B, a, c1=1e-2, c2=1e-2, L0=None, eps=1e-8, *, ns):
    """LM-RLLC F(B, a, c1, c2), spec/rllc.md#lm_rllc (Def. 5.1); L0 defaults to the unit-gain law."""
    return LMRLLC(ns, **checked.lm_rllc(B, a, c1, c2, L0, eps, _to_host(ns)))


def linear_memory(B, a, L, *, ns):
    """The fixed-law optimizer L(B, a, L), spec/rllc.md#linear_memory (Sec. 4)."""
    return LinearMemory(ns, **checked.linear_memory(B, a, L, _to_host(ns)))
