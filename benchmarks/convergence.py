"""Measure the convergence table of spec/convergence.md with a backend and plot it.

    python benchmarks/convergence.py [--backend reference] [--out benchmarks/results]

Prints, for every (algorithm, problem) of the convergence property, the steps each of the five
starts needs to reach relative suboptimality 1e-8, the worst of them and the budget the suite
allows; draws the suboptimality curves of the first start to convergence.png (needs matplotlib:
pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _plotting import pyplot

from stepspec.backends import resolve
from stepspec.conformance.convergence import (
    BUDGETS,
    START_SEEDS,
    TOLERANCE,
    relative_suboptimality,
    steps_to_tolerance,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="reference")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    backend = resolve(args.backend)
    curves = {}
    print(
        f"backend {backend.name} ({backend.dtype}); steps to relative suboptimality {TOLERANCE:g}, starts {START_SEEDS}"
    )
    print(f"{'algorithm':<10} {'problem':<10} {'per start':<32} {'worst':>6} {'budget':>7}")
    for (algo, name), budget in BUDGETS.items():
        horizon = 2 * budget  # look past the budget, so that a miss shows by how much
        counts = []
        for seed in START_SEEDS:
            gaps = relative_suboptimality(backend, algo, name, seed, horizon)
            counts.append(steps_to_tolerance(gaps))
            if seed == START_SEEDS[0]:
                curves[algo, name] = gaps
        worst = None if None in counts else max(counts)
        shown = ", ".join("-" if c is None else str(c) for c in counts)
        print(f"{algo:<10} {name:<10} {shown:<32} {worst if worst is not None else '-':>6} {budget:>7}", flush=True)
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
        axis.axhline(TOLERANCE, color="grey", linestyle=":", label="tolerance")
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
