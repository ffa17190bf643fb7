"""Sutton (1992), Experiment 1, at toy scale: IDBD against the best fixed-step LMS (spec/idbd.md#experiment-1).

    python benchmarks/idbd_experiment1.py [--seeds 3] [--out benchmarks/results]

20 inputs x ~ N(0, 1), y* = s₁x₁ + … + s₅x₅ (s_i = ±1, no noise), one s_i flipped every 20 examples
(stepspec.problems.SuttonTask). Each run: 20,000 examples to wash out transients, then the mean squared
error (y* − wᵀx)² before each update over the next 10,000. LMS is fixed-step SGD swept over α; IDBD
starts from α_i = 0.05 and is swept over θ. Prints both sweeps (mean over seeds) and the step sizes IDBD
learned for relevant and irrelevant inputs; draws idbd_experiment1.png (needs matplotlib).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _plotting import pyplot

from stepspec import iterate
from stepspec import problems as P
from stepspec.reference import idbd, sgd

WASH, MEASURE = 20_000, 10_000
LMS_RATES = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08)
IDBD_RATES = (0.001, 0.002, 0.005, 0.01, 0.015)


def asymptotic_mse(optimizer, seed, keep_alpha=False):
    """(MSE over examples WASH+1 … WASH+MEASURE, final α if IDBD, α history every 100 examples)."""
    task = P.SuttonTask(n=20, relevant=5, flip_every=20, seed=seed)
    squared, history, theta_prev = [], [], np.zeros(20)
    for t, theta, s in iterate(optimizer, task, np.zeros(20), WASH + MEASURE):
        if t > WASH:
            squared.append(2 * task.batch(t).loss(theta_prev))  # f_t = ½δ² at θ_{t-1}, before the update
        if keep_alpha and t % 100 == 0:
            history.append(np.exp(s.beta))
        theta_prev = theta
    return float(np.mean(squared)), (np.exp(s.beta) if hasattr(s, "beta") else None), history


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    seeds = range(args.seeds)
    print(f"Sutton 1992 Exp. 1: {WASH} examples washed out, MSE over the next {MEASURE}, mean of {args.seeds} seeds")
    lms = {}
    for rate in LMS_RATES:
        lms[rate] = np.mean([asymptotic_mse(sgd(rate), seed)[0] for seed in seeds])
        print(f"  LMS  α = {rate:<6} MSE {lms[rate]:.3f}", flush=True)
    results, alphas, history = {}, {}, None
    for rate in IDBD_RATES:
        runs = [asymptotic_mse(idbd(alpha0=0.05, eta=rate), seed, keep_alpha=(seed == 0)) for seed in seeds]
        results[rate] = np.mean([mse for mse, _, _ in runs])
        alphas[rate] = runs[0][1]
        if rate == 0.005:
            history = np.array(runs[0][2])
        print(
            f"  IDBD θ = {rate:<6} MSE {results[rate]:.3f}   learned α: relevant {alphas[rate][:5].mean():.3f}, "
            f"irrelevant {alphas[rate][5:].mean():.4f} (max {alphas[rate][5:].max():.4f})",
            flush=True,
        )
    best_lms = min(lms, key=lms.get)
    best_idbd = min(results, key=results.get)
    print(f"best LMS:  α = {best_lms}, MSE {lms[best_lms]:.3f}   (Sutton 1992: ≈ 3.5)")
    print(f"best IDBD: θ = {best_idbd}, MSE {results[best_idbd]:.3f}   (Sutton 1992: ≈ 1.5 over a broad range of θ)")
    plt = pyplot()
    if plt is None:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    left.plot(list(lms), list(lms.values()), "o-", label="LMS, against α")
    left.plot(list(results), list(results.values()), "s-", label="IDBD, against θ")
    left.set(xlabel="α (LMS) or θ (IDBD)", ylabel="asymptotic MSE", title="Sutton 1992, Exp. 1 (Fig. 3)")
    left.legend()
    steps = 100 * np.arange(1, len(history) + 1)
    right.semilogy(steps, history[:, :5], color="tab:blue", alpha=0.8)
    right.semilogy(steps, history[:, 5:], color="tab:orange", alpha=0.5)
    right.plot([], [], color="tab:blue", label="relevant inputs (5)")
    right.plot([], [], color="tab:orange", label="irrelevant inputs (15)")
    right.set(xlabel="example", ylabel="α_i", title="step sizes learned by IDBD, θ = 0.005, seed 0")
    right.legend()
    figure.tight_layout()
    path = out / "idbd_experiment1.png"
    figure.savefig(path, dpi=120)
    print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
