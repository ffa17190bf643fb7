"""LM-RLLC's (c1, c2) swept in one compiled call with ``stepspec.jax.sweep``, the final loss as a heat map.

    python examples/jax_sweep.py                # a few seconds
    python examples/jax_sweep.py --grid 16      # 256 settings, still one compilation

The problem: a convex quadratic f(θ) = ½ Σ λ_i θ_i² in n = 50 dimensions with λ log-spaced over [1e-2, 1]
(condition number 100), from a fixed random start; LM-RLLC with propagator M(0.9) ⊕ M(0) (spec/rllc.md), its
law L_0 at the default, for 200 steps. Every (c1, c2) of a log-spaced grid runs as one row of a ``jax.vmap``
over a ``lax.scan``: one program, compiled once (the script prints the compilation count). A diverged setting
(a loss that is not finite or grew above f(θ_0)) is drawn grey. Writes ``examples/results/jax_sweep.json`` and
``.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from stepspec.jax import sweep
from stepspec.reference import propagator

RESULTS = Path(__file__).parent / "results"
N, STEPS = 50, 200
CURVATURES = np.logspace(-2, 0, N)


def loss_fn(theta):
    return 0.5 * jnp.sum(jnp.asarray(CURVATURES, theta.dtype) * theta**2)


def plot(c1s, c2s, final, start, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.colors as colors
    import matplotlib.pyplot as plt

    shown = np.where(np.isfinite(final) & (final <= start), final, np.nan)
    fig, axis = plt.subplots(figsize=(6.4, 5.2))
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("0.7")
    positive = shown[np.isfinite(shown) & (shown > 0)]
    norm = colors.LogNorm(vmin=positive.min(), vmax=start) if positive.size else None
    image = axis.pcolormesh(c2s, c1s, shown, cmap=cmap, norm=norm, shading="nearest")
    axis.set(xscale="log", yscale="log", xlabel="c2", ylabel="c1")
    axis.set_title(f"LM-RLLC M(0.9) ⊕ M(0): f(θ_T), T = {STEPS}, on a quadratic, κ = 100, n = {N}\n(grey: diverged)")
    fig.colorbar(image, label=f"final loss (f(θ_0) = {start:.3g})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=8, help="values per axis (grid² settings)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    c1s = c2s = np.logspace(-3, 0, args.grid)
    c1, c2 = (axis.ravel() for axis in np.meshgrid(c1s, c2s, indexing="ij"))
    theta0 = np.random.default_rng(args.seed).standard_normal(N)
    B, a = propagator("M(0.9) ⊕ M(0)")
    started = time.perf_counter()
    result = sweep("lm_rllc", {"c1": c1, "c2": c2}, loss_fn, theta0, STEPS, B=B, a=a)
    seconds = time.perf_counter() - started
    final = result.losses[:, -1].reshape(args.grid, args.grid)
    start = float(result.losses[0, 0])
    best = np.unravel_index(np.nanargmin(np.where(np.isfinite(final), final, np.nan)), final.shape)
    summary = {
        "settings": args.grid**2,
        "steps": STEPS,
        "seconds": seconds,
        "compilations": result.compilations,
        "c1": c1s.tolist(),
        "c2": c2s.tolist(),
        "final_loss": [[float(v) for v in row] for row in final],
        "initial_loss": start,
        "best": {"c1": float(c1s[best[0]]), "c2": float(c2s[best[1]]), "final_loss": float(final[best])},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "jax_sweep.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(c1s, c2s, final, start, args.out / "jax_sweep.png")
    print(
        f"{args.grid**2} settings × {STEPS} steps in {seconds:.2f} s, {result.compilations} compilation; best c1 = "
        f"{summary['best']['c1']:.3g}, c2 = {summary['best']['c2']:.3g}: f = {summary['best']['final_loss']:.3g} "
        f"from {start:.3g}"
    )
    print(f"wrote {args.out / 'jax_sweep.json'} and {args.out / 'jax_sweep.png'}")
    return summary


if __name__ == "__main__":
    main()
