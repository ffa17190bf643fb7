"""Measure the convergence table of spec/convergence.md with a backend and plot it.

    python benchmarks/convergence.py [--backend reference] [--out benchmarks/results] [--baselines]

Prints, for every (algorithm, problem) of the convergence property, the steps each of the five
starts needs to reach the problem's relative suboptimality tolerance, the worst of them and the budget the suite
allows; draws the suboptimality curves of the first start to convergence.png (needs matplotlib:
pip install -e ".[bench]"). --baselines adds, on the mini-batch problem, the Trainable Optimizer's
configuration without its linear part (lr_A = 0: SGD for η^b = 1, momentum for η^b = 0.1, with the
same decaying α), which spec/convergence.md compares the TO variants with, and the quadratic with
every TO variant's linear rate raised to 1e-3 (the rate must be of order 1/‖x*‖² there).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _plotting import pyplot

from stepspec import reference, run
from stepspec.backends import resolve
from stepspec.conformance.convergence import (
    BUDGETS,
    START_SEEDS,
    configuration,
    problem,
    relative_suboptimality,
    steps_to_tolerance,
    tolerance,
)


def baselines() -> None:
    """The mini-batch TO configuration with lr_A = 0, for η^b = 1 (SGD) and η^b = 0.1 (momentum)."""
    name = "minibatch_logistic"
    f = problem(name)
    for eta_b in (1.0, 0.1):
        hp = {**configuration("trainable_optimizer", name), "lr_A": 0.0, "lr_b": eta_b}
        counts = []
        for seed in START_SEEDS:
            theta0 = np.random.default_rng(seed).standard_normal(f.n)
            thetas = run(reference.trainable_optimizer(**hp), f, theta0, 3000)
            gaps = np.array([(f.loss(theta) - f.min_value) / (f.loss(theta0) - f.min_value) for theta in thetas])
            counts.append(steps_to_tolerance(gaps, tolerance(name)))
        shown = ", ".join("-" if c is None else str(c) for c in counts)
        print(f"{'TO, lr_A = 0, η^b = ' + str(eta_b):<40} {tolerance(name):>9g} {shown}")


def too_large_linear_rate(backend) -> None:
    """The quadratic with each TO variant's linear-part rate at 1e-3 instead of 0.1/(1 + ‖x*‖²)."""
    name = "quadratic"
    for algo, rate in (("trainable_optimizer", "lr_A"), ("diagonal_to", "lr_a"), ("rank_one_to", "lr_uv")):
        outcomes = []
        for seed in START_SEEDS:
            hp = {**configuration(algo, name), rate: 1e-3}
            gaps = relative_suboptimality(backend, algo, name, seed, 3000, hyperparameters=hp)
            reached = steps_to_tolerance(gaps, tolerance(name))
            if reached is not None:
                outcomes.append(str(reached))
            else:
                outcomes.append("diverged" if np.isinf(gaps[-1]) else f"gap {gaps[-1]:.1e}")
        print(f"{algo + ', ' + rate + ' = 1e-3, quadratic':<40} {tolerance(name):>9g} {', '.join(outcomes)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="reference")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--baselines", action="store_true", help="add the TO comparison rows of spec/convergence.md")
    args = parser.parse_args(argv)
    backend = resolve(args.backend)
    curves = {}
    print(
        f"backend {backend.name} ({backend.dtype}); steps to the relative suboptimality tolerance, starts {START_SEEDS}"
    )
    print(f"{'algorithm':<20} {'problem':<19} {'tolerance':>9} {'per start':<32} {'worst':>6} {'budget':>7}")
    for (algo, name), budget in BUDGETS.items():
        horizon = 2 * budget  # look past the budget, so that a miss shows by how much
        counts = []
        for seed in START_SEEDS:
            gaps = relative_suboptimality(backend, algo, name, seed, horizon)
            counts.append(steps_to_tolerance(gaps, tolerance(name)))
            if seed == START_SEEDS[0]:
                curves[algo, name] = gaps
        worst = None if None in counts else max(counts)
        shown = ", ".join("-" if c is None else str(c) for c in counts)
        worst_shown = "-" if worst is None else str(worst)
        print(f"{algo:<20} {name:<19} {tolerance(name):>9g} {shown:<32} {worst_shown:>6} {budget:>7}", flush=True)
    if args.baselines:
        baselines()
        too_large_linear_rate(backend)
    plt = pyplot()
    if plt is None:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    problems = sorted({name for _, name in BUDGETS})
    figure, axes = plt.subplots(1, len(problems), figsize=(6 * len(problems), 4.2))
    for axis, name in zip(axes, problems):
        for (algo, problem_name), gaps in curves.items():
            if problem_name == name:
                axis.semilogy(gaps.clip(min=1e-17), label=algo)
        axis.axhline(tolerance(name), color="grey", linestyle=":", label="tolerance")
        axis.set(
            title=f"{name} (start seed {START_SEEDS[0]})",
            xlabel="step t",
            ylabel="(f(θ_t) − f*) / (f(θ_0) − f*)",
            ylim=(1e-17, 10),
        )
        axis.legend()
    figure.tight_layout()
    path = out / "convergence.png"
    figure.savefig(path, dpi=120)
    print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
