"""How exact is MetaOptimize's surrogate meta-gradient? (spec/metaoptimize.md, corrections)

    python benchmarks/surrogate_gradient.py

For each configuration, the relative error of H_tᵀ∇f_t(w_t) against Σ_s c_s df_t(w_t)/dβ_s, the total
derivative through the unrolled run by central differences (`stepspec.conformance.surrogate`, which the
conformance properties use too), on a quadratic (n = 3, κ = 5, seed 0), weight-wise step sizes, exact Hessian,
8 steps, α₀ = 0.1, for η = 0.1, 0.05, 0.025, 0.0125, with the ratio of consecutive errors (0.25: O(η²),
0.5: O(η)).
"""

from __future__ import annotations

import numpy as np

from stepspec import problems as P
from stepspec.backends.reference import BACKEND
from stepspec.conformance.surrogate import surrogate_gap

CONFIGURATIONS = [
    ("sgd", "full", "sgd"),
    ("sgdm", "full", "sgd"),
    ("sgd", "full", "adam"),
    ("sgd", "full", "lion"),
    ("sgdm", "full", "lion"),
    ("sgd", "2x2", "sgd"),
    ("sgd", "L", "sgd"),
    ("sgd", "2x2", "lion"),
    ("rmsprop", "full", "sgd"),
    ("adamw", "2x2", "sgd"),
]
RATES = (0.1, 0.05, 0.025, 0.0125)


def main() -> int:
    problem = P.random_quadratic(3, condition=5.0, seed=0)
    theta0 = np.random.default_rng(100).standard_normal(3)
    print(f"{'base':<8} {'approx':<6} {'meta':<6} " + " ".join(f"{f'η={r}':>10}" for r in RATES) + "   ratios")
    for base, approximation, meta in CONFIGURATIONS:
        errors = []
        for rate in RATES:
            hp = dict(
                base=base,
                meta=meta,
                alpha0=0.1,
                eta=rate,
                approximation=approximation,
                hessian="exact",
                blocks="weightwise",
            )
            errors.append(surrogate_gap(BACKEND, hp, problem, theta0, 8)[0])
        ratios = " ".join(f"{b / a:.2f}" for a, b in zip(errors, errors[1:]))
        print(
            f"{base:<8} {approximation:<6} {meta:<6} " + " ".join(f"{e:10.1e}" for e in errors) + f"   {ratios}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
