"""RLLC, LM-RLLC and fixed-law linear memory in torch, spec/rllc.md (tags R1–R6), on parameter structures.

The memory M (n × k) is k separate tensors per parameter (``Columns(1)``), so the memory update (R4) and the
learning step (R2) are multi-tensor elementwise passes. The law step (R1) needs M⁺g, a k×k problem: its
data, the Gram matrix MᵀM and Mᵀg, are per-tensor partial sums combined in one ``reduce_sum`` round, and the
relaxed inverse (R3) is solved from the Gram matrix's eigendecomposition on the device. Written from the spec
page; the NumPy reference is not called.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ...errors import HyperparameterError
from .. import _hyperparameters as checked
from . import _fused
from ._core import WHOLE, Columns, Layout, Optimizer, as_tensors, reduce_sum

MEMORY = Columns(1)
GRAM_DTYPE = torch.float64
"""The law step's Gram matrix and Mᵀg are accumulated (products and sums) and solved in float64 in every
working precision; see ``relaxed_inverse_step``."""


class AsReturned(Layout):
    """A memory rule's hidden state H: whatever the rule returns, stored and shown as it is."""

    def flat(self, stored, structure):
        return stored

    def store(self, name, value, structure, default):
        return value


# --------------------------------------------------------------------------- the law step (R1, R3)


def gram_pairs(k: int) -> list[tuple[int, int]]:
    """The entries (i, j) of the k×(k+1) upper triangle of [MᵀM | Mᵀg], in ``torch.triu_indices`` order;
    index k is g."""
    return [(i, j) for i in range(k) for j in range(i, k + 1)]


def gram_partials(columns: list[torch.Tensor], grad: torch.Tensor) -> torch.Tensor:
    """One parameter tensor's share of [MᵀM | Mᵀg], the ``gram_pairs`` entries, in float64: the products of
    float32 entries are exact there."""
    vectors = [x.reshape(-1).to(GRAM_DTYPE) for x in (*columns, grad)]
    return torch.stack([torch.dot(vectors[i], vectors[j]) for i, j in gram_pairs(len(columns))])


def relaxed_inverse_step(reduced: torch.Tensor, k: int, n: int, eps: float, working: torch.dtype) -> torch.Tensor:
    """M_ε⁺g (R3) from the reduced [MᵀM | Mᵀg] upper triangle, in float64 (spec/rllc.md#backends).

    With MᵀM = V diag(σ²) Vᵀ, M_ε⁺g = V diag(1/(σ² + ε)) Vᵀ Mᵀg over the kept σ: for ε = 0 the exact M⁺g (R3a),
    otherwise Tikhonov (R3b), σ/(σ² + ε) on Uᵀg being 1/(σ² + ε) on VᵀMᵀg. A σ counts as zero at or below
    √(n·k)·u·σ_max, u the machine epsilon of the working precision (R3c), and also at or below
    √(max(n, k)·2⁻⁵²)·σ_max, below which the float64 Gram matrix's eigenvalues are round-off.
    """
    rows, cols = torch.triu_indices(k, k + 1, device=reduced.device)
    upper = torch.zeros(k, k + 1, dtype=GRAM_DTYPE, device=reduced.device).index_put((rows, cols), reduced)
    eigenvalues, V = torch.linalg.eigh(upper[:, :k], UPLO="U")
    relative_cutoff = max(n * k * torch.finfo(working).eps ** 2, max(n, k) * torch.finfo(GRAM_DTYPE).eps)
    kept = eigenvalues > relative_cutoff * eigenvalues.max()
    coefficients = torch.where(kept, 1.0 / (eigenvalues + eps), 0.0)
    return V @ (coefficients * (V.T @ upper[:, k]))


def law_update(state, grad: list[torch.Tensor], c2: float, eps: float, partials=None) -> torch.Tensor:
    """(R1) L_t = L_{t-1} + c2 M_{t-1,ε}⁺ g_t, from the memory before this step's update: one reduction round,
    over ``partials`` (the per-tensor ``gram_partials``, or the fast path's)."""
    (columns,) = state.stored["M"]
    k, structure = len(columns), state.structure
    if partials is None:
        partials = [gram_partials([column[i] for column in columns], g) for i, g in enumerate(grad)]
    step = relaxed_inverse_step(reduce_sum(partials), k, structure.n, eps, structure.dtype)
    return state.stored["L"] + c2 * step.to(structure.dtype)


# --------------------------------------------------------------------------- the memory and the learning step


def propagate(columns: list[list[torch.Tensor]], grad: list[torch.Tensor], B, a) -> list[list[torch.Tensor]]:
    """(R4) M B + g aᵀ: unit j becomes a_j g + Σ_i B_ij m_i. A unit that reads no other unit (column j of B
    zero off the diagonal) is updated in place, after the units that read it."""
    k = len(columns)
    reads_others = [any(B[i][j] != 0 for i in range(k) if i != j) for j in range(k)]
    new = list(columns)
    for j in (j for j in range(k) if reads_others[j]):
        unit = torch._foreach_mul(grad, a[j])
        for i in range(k):
            if B[i][j] != 0:
                torch._foreach_add_(unit, columns[i], alpha=B[i][j])
        new[j] = unit
    for j in (j for j in range(k) if not reads_others[j]):
        torch._foreach_mul_(columns[j], B[j][j])
        torch._foreach_add_(columns[j], grad, alpha=a[j])
    return new


def combine(columns: list[list[torch.Tensor]], weights) -> list[torch.Tensor]:
    """Σ_j weights_j m_j, one tensor per parameter; weights host floats or 0-d tensors on the device."""
    update = torch._foreach_mul(columns[0], weights[0])
    for column, weight in zip(columns[1:], weights[1:]):
        torch._foreach_add_(update, torch._foreach_mul(column, weight))
    return update


def learning_step(state, c1: float) -> list[torch.Tensor]:
    """(R2) G = −c1 M_t L_t, the law staying on the device."""
    (columns,) = state.stored["M"]
    return combine(columns, -c1 * state.stored["L"])


# --------------------------------------------------------------------------- optimizers


class _Memory(Optimizer):
    """The shared S_0 parts: M_0 = 0 with k units, and the law L_0 as a tensor of the working precision."""

    @property
    def k(self) -> int:
        return len(self.a)

    def zero_memory(self, structure) -> list[list[list[torch.Tensor]]]:
        return [[structure.zeros() for _ in range(self.k)]]

    def law(self, values: np.ndarray) -> torch.Tensor:
        return torch.tensor(values, dtype=self.dtype, device=self.device)


class RLLC(_Memory):
    algo = "rllc"
    layouts = {"M": MEMORY, "H": AsReturned(), "L": WHOLE}

    @property
    def k(self) -> int:
        return len(self.L0)

    def initial_state(self, structure, params):
        return {"M": self.zero_memory(structure), "H": self.H0, "L": self.law(self.L0)}

    def _F_(self, state, step):
        structure = state.structure
        L = law_update(state, step.grad, self.c2, self.eps)  # (R1), from M_{t-1}
        M, H = self.rule(state.M, state.stored["H"], structure.join(step.grad))  # (R5) on the flat n × k memory
        M = self._checked_memory(M, structure)
        state.stored.update(M=[[structure.split(M[:, j]) for j in range(self.k)]], H=H, L=L)

    def _checked_memory(self, M, structure) -> torch.Tensor:
        """The rule's M' as a finite real (n, k) tensor of the working precision, or HyperparameterError
        naming ``rule`` (raised before the state is touched)."""
        shape = tuple(M.shape) if hasattr(M, "shape") else None
        if shape != (structure.n, self.k):
            raise HyperparameterError("rule", f"must return M of shape {(structure.n, self.k)}, got {shape}")
        (M,), _ = as_tensors("rule", [M], HyperparameterError, structure.dtype, structure.device)
        return M

    def _G(self, state, step):
        return learning_step(state, self.c1)


class LMRLLC(_Memory):
    algo = "lm_rllc"
    layouts = {"M": MEMORY, "L": WHOLE}

    def initial_state(self, structure, params):
        return {"M": self.zero_memory(structure), "L": self.law(self.L0)}

    def _F_(self, state, step):
        L = law_update(state, step.grad, self.c2, self.eps)  # (R1), from M_{t-1}
        state.stored.update(M=[propagate(state.stored["M"][0], step.grad, self.B, self.a)], L=L)  # (R4)

    def _G(self, state, step):
        return learning_step(state, self.c1)


class LinearMemory(_Memory):
    algo = "linear_memory"
    layouts = {"M": MEMORY}

    def initial_state(self, structure, params):
        return {"M": self.zero_memory(structure)}

    def _F_(self, state, step):
        state.stored["M"] = [propagate(state.stored["M"][0], step.grad, self.B, self.a)]  # (R4)

    def _G(self, state, step):
        return combine(state.stored["M"][0], [-x for x in self.L])  # (R6) −M_t L, no c1


# --------------------------------------------------------------------------- hyperparameters (host, at construction)


def _to_host(value):
    """A tensor as a host array for the shared checks (``_hyperparameters``); other values unchanged."""
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def _as_host_scalars(hp: dict) -> dict:
    """B, a and a fixed law L as Python floats: the elementwise passes take them as host scalars."""
    return {**hp, **{name: hp[name].tolist() for name in ("B", "a", "L") if name in hp}}


# --------------------------------------------------------------------------- constructors (the spec's signatures)


def rllc(rule: Callable, c1, c2, L0, eps=1e-8, H0=None, *, dtype=torch.float64, device="cpu"):
    """RLLC of a memory rule U(M, H, g) -> (M', H') on (n, k) tensors, spec/rllc.md#rllc (Def. 3.2)."""
    return RLLC(dtype, device, rule=rule, **checked.rllc(rule, c1, c2, L0, eps, _to_host), H0=H0)


def lm_rllc(B, a, c1=1e-2, c2=1e-2, L0=None, eps=1e-8, *, dtype=torch.float64, device="cpu"):
    """LM-RLLC F(B, a, c1, c2), spec/rllc.md#lm_rllc (Def. 5.1); L0 defaults to the unit-gain law."""
    return LMRLLC(dtype, device, **_as_host_scalars(checked.lm_rllc(B, a, c1, c2, L0, eps, _to_host)))


def linear_memory(B, a, L, *, dtype=torch.float64, device="cpu"):
    """The fixed-law optimizer L(B, a, L), spec/rllc.md#linear_memory (Sec. 4)."""
    return LinearMemory(dtype, device, **_as_host_scalars(checked.linear_memory(B, a, L, _to_host)))


# --------------------------------------------------------------------------- the fast path (spec/backends.md#compiled)
# LM-RLLC: the law step's reduction round over (M_{t-1}, g), its k×k solve (R1, R3), then one pass per tensor
# that writes M_t (R4) and θ_t (R2). linear_memory: the pass alone.


def _gram_row(*items: torch.Tensor) -> torch.Tensor:
    """``gram_partials`` of one tensor (``items``: the k units, then g) as products summed: under
    torch.compile one loop reads each unit and g once for all the sums."""
    vectors = [x.to(GRAM_DTYPE) for x in items]
    return torch.stack([(vectors[i] * vectors[j]).sum() for i, j in gram_pairs(len(items) - 1)])


def _memory_pass(theta, g, *units_and_scalars):
    """(R4) m_j ← a_j g + Σ_i B_ij m_i, every unit from the old ones, then θ += Σ_j w_j m_j; the scalars are
    B row by row, a, and the weights w (−c1 L_t, or −L). B's zero entries are multiplied, not skipped: the
    pass reads every unit anyway, as the write of each brings it into the cache."""
    *units, s = units_and_scalars
    k = len(units)
    B, a, w = s[: k * k], s[k * k : k * k + k], s[k * k + k :]
    new = []
    for j in range(k):
        unit = a[j] * g
        for i in range(k):
            unit = unit + B[i * k + j] * units[i]
        new.append(unit)
    update = w[0] * new[0]
    for j in range(1, k):
        update = update + w[j] * new[j]
    for unit, value in zip(units, new):
        unit.copy_(value)
    theta.copy_(theta + update)


def _propagation(optimizer) -> list[float]:
    """B row by row, then a: the pass's first k² + k scalars."""
    return [*(x for row in optimizer.B for x in row), *optimizer.a]


def _lm_rllc_scalars(optimizer, state, step, params, compile):
    """(R1) from the reduced [MᵀM | Mᵀg] of M_{t-1}; the weights −c1 L_t stay on the device."""
    (units,) = state.stored["M"]
    rows = _fused.partial_sums(_gram_row, [*units, step.grad], compile)
    state.stored["L"] = law_update(state, step.grad, optimizer.c2, optimizer.eps, rows)
    return (*_propagation(optimizer), *(-optimizer.c1 * state.stored["L"]).unbind())


def _units(state) -> list[list[torch.Tensor]]:
    return state.stored["M"][0]


KERNELS: dict[str, _fused.Kernel] = {
    "lm_rllc": _fused.Kernel(("M",), _lm_rllc_scalars, _memory_pass, state_columns=_units, reduces=True),
    "linear_memory": _fused.Kernel(
        ("M",), lambda o, *_: (*_propagation(o), *(-x for x in o.L)), _memory_pass, state_columns=_units
    ),
}
"""Algorithm id → its fast path (``_fused``)."""
