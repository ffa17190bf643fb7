"""IDBD (Sutton 1992) and its non-linear extension, spec/idbd.md (tags I1–I10), in torch on parameter
structures; written from the spec page, the NumPy reference is not called."""

from __future__ import annotations

import math

import torch

from ._core import PARAM, Columns, Optimizer, Structure, hyperparameters, reduce_sum


def hessian_diagonal(hvp, structure: Structure) -> list[torch.Tensor]:
    """diag ∇²f, one tensor per parameter, from n Hessian-vector products with the basis vectors (I2): the
    spec's exact diagonal, n products per step (meant for the small linear units IDBD is defined on; an
    estimator such as Hutchinson's would not be the spec's algorithm)."""
    diagonal = []
    for i, (shape, size) in enumerate(zip(structure.shapes, structure.sizes)):
        entries = torch.zeros(size, dtype=structure.dtype, device=structure.device)
        for j in range(size):
            basis = structure.zeros()  # a fresh vector per product: the caller's hvp may keep its argument
            basis[i].view(-1)[j] = 1
            entries[j] = hvp(basis)[i].reshape(-1)[j]
        diagonal.append(entries.reshape(shape))
    return diagonal


def _step_sizes(structure: Structure, alpha0: float) -> dict:
    """β_0 = log α₀ and α₀ for every weight."""

    def full(value):
        return [torch.full(s, value, dtype=structure.dtype, device=structure.device) for s in structure.shapes]

    return {"beta": full(math.log(alpha0)), "alpha": full(float(alpha0))}


class IDBD(Optimizer):
    algo = "idbd"
    layouts = {"beta": PARAM, "alpha": PARAM, "h": PARAM}

    def initial_state(self, structure, params):
        return {**_step_sizes(structure, self.alpha0), "h": structure.zeros()}

    def _F_(self, state, step):
        s, g = state.stored, step.grad  # (I1) g = ∇f = −δx for the linear unit
        x2 = hessian_diagonal(step.hvp, state.structure)  # (I2) x_i² = diag ∇²f
        beta = torch._foreach_mul(g, s["h"])  # (I3) β_i ← β_i − θ g_i h_i, with the old h
        torch._foreach_mul_(beta, -self.eta)
        torch._foreach_add_(beta, s["beta"])
        alpha = torch._foreach_exp(beta)  # (I4) α_i ← e^{β_i}, used by (I5) and (I6)
        decay = torch._foreach_mul(alpha, x2)  # (I6) h_i ← h_i [1 − α_i x_i²]⁺ − α_i g_i
        torch._foreach_neg_(decay)
        torch._foreach_add_(decay, 1.0)
        torch._foreach_clamp_min_(decay, 0.0)
        h = torch._foreach_mul(s["h"], decay)
        torch._foreach_sub_(h, torch._foreach_mul(alpha, g))
        s.update(beta=beta, alpha=alpha, h=h)

    def _G(self, state, step):
        update = torch._foreach_mul(state.stored["alpha"], step.grad)  # (I5) −α_i g_i with the new α of S_t
        torch._foreach_neg_(update)
        return update

    def _apply_(self, state, step, params):
        torch._foreach_sub_(params, torch._foreach_mul(state.stored["alpha"], step.grad))


class IDBDNonlinear(Optimizer):
    algo = "idbd_nonlinear"
    layouts = {"beta": PARAM, "alpha": PARAM, "H": Columns(1)}

    def initial_state(self, structure, params):
        return {**_step_sizes(structure, self.alpha0), "H": [[structure.zeros() for _ in range(structure.n)]]}

    def _F_(self, state, step):
        s, g, structure = state.stored, step.grad, state.structure
        columns = s["H"][0]
        # (I7) β_{t+1} = β_t − η H_tᵀ∇f_t: z_j = Σ_k H_{k,j} g_k, one reduction round over the tensors
        partials = [
            torch.stack([torch.dot(column[k].reshape(-1), g[k].reshape(-1)) for column in columns])
            for k in range(len(g))
        ]
        z = structure.split(reduce_sum(partials))
        beta = torch._foreach_mul(z, -self.eta)
        torch._foreach_add_(beta, s["beta"])
        alpha = torch._foreach_exp(beta)  # (I8)
        # (I10) H' = (I − [α]∇²f)H − [α∇f]: column j gets −α_j g_j in row j
        forcing = [x.reshape(-1) for x in torch._foreach_mul(alpha, g)]
        new_columns = [torch._foreach_sub(column, torch._foreach_mul(alpha, step.hvp(column))) for column in columns]
        j = 0
        for k, size in enumerate(structure.sizes):
            for entry in range(size):
                new_columns[j][k].view(-1)[entry] -= forcing[k][entry]
                j += 1
        s.update(beta=beta, alpha=alpha, H=[new_columns])

    def _G(self, state, step):
        update = torch._foreach_mul(state.stored["alpha"], step.grad)  # (I9) −α_{t+1}⊙∇f_t with α of S_t
        torch._foreach_neg_(update)
        return update

    def _apply_(self, state, step, params):
        torch._foreach_sub_(params, torch._foreach_mul(state.stored["alpha"], step.grad))


def idbd(alpha0=0.05, eta=0.01, *, dtype=torch.float64, device="cpu"):
    """IDBD (spec/idbd.md#idbd): weight-wise exponential step sizes; observes ``grad`` and ``hvp``."""
    hp = hyperparameters("idbd", alpha0=alpha0, eta=eta)
    return IDBD(dtype, device, frozenset({"grad", "hvp"}), **hp)


def idbd_nonlinear(alpha0=0.05, eta=0.01, *, dtype=torch.float64, device="cpu"):
    """IDBD for non-linear losses (spec/idbd.md#idbd_nonlinear): exact Hessian, no clipping; the n × n trace
    H is n per-weight columns, and a step takes n Hessian-vector products, as the spec defines it."""
    hp = hyperparameters("idbd_nonlinear", alpha0=alpha0, eta=eta)
    return IDBDNonlinear(dtype, device, frozenset({"grad", "hvp"}), **hp)
