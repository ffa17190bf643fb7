"""How exact is MetaOptimize's surrogate meta-gradient H_tᵀ∇f_t(w_t)? The backend's, against its ground truth:
central differences through the float64 reference's run (spec/metaoptimize.md#corrections-of-the-paper-tested).
Shared by the conformance properties `surrogate_gradient_*` and `benchmarks/surrogate_gradient.py`.

The differences go through the reference, not through the backend's own run, because their error in a
precision is about u^(2/3) relative: 1.3e-4 for a float32 run on the order cases, above the O(η²) error of the
full approximation (5e-5 at η = 0.05), so a float32 run could not resolve what the properties measure; the
backend contributes its Hᵀ∇f, the quantity under test."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backends.reference import BACKEND as REFERENCE
from .catalog import CATALOG
from .harness import Run, construct, run
from .tolerance import UNIT_ROUNDOFF

MO = "metaoptimize"


class SurrogateGap(NamedTuple):
    """Relative errors, all on the scale ‖D‖∞ of the derivative D = Σ_s c_s df_t(w_t)/dβ_s."""

    gap: float  # ‖z − D‖∞: the backend's z = H_tᵀ∇f_t(w_t) against D
    fd_error: float  # the differences' own error, ‖D(h) − D(h/4)‖∞; large where the run is not smooth
    departure: float  # ‖z − z_ref‖∞: the backend's z against the reference's own (0 for the reference itself)


def surrogate_gap(backend, hp, problem, theta0, steps) -> SurrogateGap:
    """The backend's H_tᵀ∇f_t(w_t) against Σ_s c_s df_t(w_t)/dβ_s, c_0 = γ^(t−1), c_s = (1 − γ)γ^(t−1−s), by
    central differences through the reference's run with steps h = u^(1/3) (float64) and h/4; β_s is perturbed
    with a state override."""
    optimizer = construct(REFERENCE, CATALOG[MO], hp, guarded=False)
    reference = run(REFERENCE, MO, optimizer, problem, theta0, steps)
    mine = run(backend, MO, construct(backend, CATALOG[MO], hp), problem, theta0, steps)
    t, gamma, n = steps, hp.get("gamma", 1.0), problem.n
    f_t = problem.batch(t + 1) if hasattr(problem, "batch") else problem

    def surrogate(r: Run) -> np.ndarray:
        return r.states[t]["X"][:n].T @ f_t.grad(r.thetas[t])

    m = len(reference.states[0]["beta"])

    def loss_after(s, i, shift):
        fields = dict(reference.states[s])
        fields["beta"] = fields["beta"] + shift * np.eye(m)[i]
        later = run(REFERENCE, MO, optimizer, FromStep(problem, s), reference.thetas[s], t - s, fields)
        return f_t.loss(later.thetas[-1])

    estimates = []
    u = UNIT_ROUNDOFF[REFERENCE.dtype]
    for h in (u ** (1 / 3), u ** (1 / 3) / 4):
        fd = np.zeros(m)
        for s in range(t):
            c = gamma ** (t - 1) if s == 0 else (1 - gamma) * gamma ** (t - 1 - s)
            for i in range(m):
                if c:
                    fd[i] += c * (loss_after(s, i, h) - loss_after(s, i, -h)) / (2 * h)
        estimates.append(fd)
    truth = estimates[1]
    scale = max(np.max(np.abs(truth)), 1e-300)

    def relative(a, b) -> float:
        return float(np.max(np.abs(a - b)) / scale)

    z = surrogate(mine)
    return SurrogateGap(relative(z, truth), relative(estimates[0], truth), relative(z, surrogate(reference)))


class FromStep:
    """``problem`` seen from step s on: batch(t) is the original batch(s + t)."""

    def __init__(self, problem, s):
        self.problem, self.s, self.n = problem, s, problem.n

    def batch(self, t):
        return self.problem.batch(self.s + t) if hasattr(self.problem, "batch") else self.problem
