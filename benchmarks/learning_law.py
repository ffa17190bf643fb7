"""Paper 000, Fig. 2 at toy scale: how LM-RLLC's learning law on M(0.9) ⊕ M(0) moves during training.

    python benchmarks/learning_law.py [--steps 3000] [--c1 0.1] [--c2 0.01] [--out benchmarks/results]

The paper reports (Sec. 6, Fig. 2, a ResNet on CIFAR-10) that the momentum unit's coefficient
dominates early, the plain-gradient unit's later, with a NAG-like phase in between, where the ratio
L_1/L_2 of the two coefficients equals β (App. A). This runs the reference on seeded mini-batch
logistic regression (2000 samples, 20 features, batch 64) from L_0 = (1, 1), prints the law at a few
steps and the step where L_1/L_2 crosses β = 0.9, and draws learning_law.png (needs matplotlib).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _plotting import pyplot

from stepspec import iterate
from stepspec import problems as P
from stepspec.reference import lm_rllc, propagator

BETA = 0.9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--c1", type=float, default=0.1)
    parser.add_argument("--c2", type=float, default=0.01)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)

    full = P.random_logistic(2000, 20, l2=1e-3, seed=0)
    stochastic = P.MiniBatch(full, batch_size=64, seed=1)
    optimizer = lm_rllc(*propagator(f"M({BETA}) ⊕ M(0)"), c1=args.c1, c2=args.c2, L0=np.ones(2), eps=1e-8)
    laws, gaps = [], []
    for t, theta, state in iterate(optimizer, stochastic, np.zeros(full.n), args.steps):
        laws.append(state.L)
        gaps.append(full.loss(theta) - full.min_value)
        if t % max(1, args.steps // 10) == 0:
            print(f"t={t:5d}  L=({state.L[0]:+.3f}, {state.L[1]:+.3f})  f − f* = {gaps[-1]:.3e}", flush=True)
    laws = np.array(laws)
    ratio = laws[:, 0] / laws[:, 1]
    crossing = np.flatnonzero((ratio[:-1] - BETA) * (ratio[1:] - BETA) <= 0)
    print(f"L_1/L_2 = β = {BETA} (the NAG law of App. A) at t = {crossing[0] + 1 if crossing.size else 'never'}")
    plt = pyplot()
    if plt is None:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    left.plot(laws[:, 0], label=f"L_1 (unit M({BETA}), momentum)")
    left.plot(laws[:, 1], label="L_2 (unit M(0), gradient)")
    left.axhline(0, color="grey", linewidth=0.5)
    if crossing.size:
        left.axvline(crossing[0] + 1, color="grey", linestyle=":", label="L_1/L_2 = β (NAG)")
    left.set(title=f"LM-RLLC learning law, c1 = {args.c1}, c2 = {args.c2}", xlabel="step t")
    left.legend()
    right.semilogy(np.maximum(gaps, 1e-16))
    right.set(title="full-batch suboptimality f(θ_t) − f*", xlabel="step t")
    figure.tight_layout()
    path = out / "learning_law.png"
    figure.savefig(path, dpi=120)
    print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
