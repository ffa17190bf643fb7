"""Paper 002's strongly convex protocol at small scale: TO variants against Adam (spec/trainable_optimizer.md).

    python benchmarks/trainable_optimizer.py [--epochs 15] [--jobs 2] [--out benchmarks/results]

L2-regularised multinomial logistic regression on scikit-learn's bundled datasets (digits, breast
cancer, wine; features standardised, an intercept column appended), weights initialised N(0, 1),
mini-batches of 64 by shuffled epochs, two regularisation strengths each. Every method's configuration
is chosen from a small grid on two tuning seeds (0, 6) by the worse of their minimum full training
losses over the epochs; the chosen configuration then runs on five fresh seeds (1–5: initial weights
and batch order). Per seed,
ρ = (min_e L(e) − min_e L_Adam(e)) / min_e L_Adam(e); the table reports the mean ρ over the seeds and a
two-sided Wald test of mean ρ = 0 (paper 002, Sec. 4.1; Table 2 layout, with Momentum as in its Table 6).
Draws trainable_optimizer.png: the median training loss per epoch of each chosen configuration, and
writes the per-seed figures to trainable_optimizer.json. Needs
scikit-learn (pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from _plotting import pyplot

from stepspec import Observation, ObservationError, StepSizeWarning
from stepspec import problems as P
from stepspec.reference import adam, diagonal_to, momentum, rank_one_to, trainable_optimizer

BATCH = 64
L2 = (1e-3, 1e-2)
TUNING_SEEDS, SEEDS = (0, 6), (1, 2, 3, 4, 5)
SIGNIFICANCE = 0.05
PER_EPOCH_DECAYS = (1.0, 0.9)  # exponential decay per epoch, applied per step as ρ^(1/steps per epoch)
BOUND_FRACTIONS = (0.0, 0.1, 0.5, 1.0)  # the paper's "TO-specific" grid, read as fractions of the step-size bound
METHODS = ("adam", "momentum", "trainable_optimizer", "diagonal_to", "rank_one_to")
LABELS = {
    "adam": "Adam",
    "momentum": "Momentum",
    "trainable_optimizer": "Full TO",
    "diagonal_to": "Diagonal TO",
    "rank_one_to": "RankOne TO",
}


@functools.cache
def features(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A bundled scikit-learn dataset: standardised features with an intercept column, and labels."""
    from sklearn import datasets

    loaders = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}
    X, y = loaders[name](return_X_y=True)
    X = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    return np.hstack([X, np.ones((X.shape[0], 1))]), y


def dataset(name: str, l2: float) -> P.Softmax:
    return P.Softmax(*features(name), l2)


def bound_curvature(algo: str, theta0: np.ndarray) -> float:
    """The curvature the linear part's rate is measured against at θ₀ (spec/trainable_optimizer.md#step-size-bound):
    ‖x‖² for full and RankOne TO, max_i x_i² for Diagonal TO."""
    return float(np.max(theta0 * theta0)) if algo == "diagonal_to" else float(theta0 @ theta0)


def grid(algo: str) -> list[dict]:
    """Each method's configurations; ``decay`` is per epoch, ``fraction`` a share of the step-size bound."""
    if algo == "adam":
        return [
            {"lr": lr, "decay": d} for lr, d in itertools.product((1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0), PER_EPOCH_DECAYS)
        ]
    if algo == "momentum":
        return [{"lr": lr, "decay": d} for lr, d in itertools.product((1e-2, 0.1, 0.3, 1.0, 3.0), PER_EPOCH_DECAYS)]
    return [
        {"lr": lr, "fraction": k, "lr_b": eta_b, "decay": d}
        for lr, k, eta_b, d in itertools.product(
            (0.1, 0.3, 1.0, 3.0, 10.0), BOUND_FRACTIONS, (0.1, 0.5), PER_EPOCH_DECAYS
        )
    ]


def make_optimizer(algo: str, config: dict, theta0: np.ndarray, steps_per_epoch: int):
    """(optimizer, per-step decay left to the caller). TO decays its own rate; Adam's and momentum's F do
    not involve the learning rate, so their decayed rate is G scaled by ρ^(t−1), which the caller applies."""
    per_step = config["decay"] ** (1 / steps_per_epoch)
    if algo == "adam":
        return adam(lr=config["lr"]), per_step
    if algo == "momentum":
        return momentum(lr=config["lr"], beta=0.9), per_step
    rate = config["fraction"] / (1 + bound_curvature(algo, theta0))
    constructor, name = {
        "trainable_optimizer": (trainable_optimizer, "lr_A"),
        "diagonal_to": (diagonal_to, "lr_a"),
        "rank_one_to": (rank_one_to, "lr_uv"),
    }[algo]
    return constructor(lr=config["lr"], lr_b=config["lr_b"], lr_decay=per_step, **{name: rate}), 1.0


def epoch_losses(task) -> tuple[np.ndarray, bool]:
    """(full training loss at epochs 0 … E, inf from a divergence on; whether a step crossed TO's
    step-size bound c ≥ 2, i.e. raised StepSizeWarning)."""
    name, l2, algo, config, seed, epochs = task
    f = dataset(name, l2)
    batches = P.ShuffledEpochs(f, BATCH, seed=seed)
    theta = np.random.default_rng(seed).standard_normal(f.n)
    optimizer, decay = make_optimizer(algo, config, theta, batches.steps_per_epoch)
    losses = np.full(epochs + 1, np.inf)
    losses[0] = f.loss(theta)
    state = optimizer.init(theta)
    with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StepSizeWarning)
        try:
            for t in range(1, epochs * batches.steps_per_epoch + 1):
                obs = Observation(grad=batches.batch(t).grad(theta), params=theta)
                state = optimizer.F(state, obs)
                theta = theta + decay ** (t - 1) * optimizer.G(state, obs)
                if t % batches.steps_per_epoch == 0:
                    value = f.loss(theta)
                    if not math.isfinite(value):
                        break
                    losses[t // batches.steps_per_epoch] = value
        except ObservationError:  # a non-finite gradient: the run diverged
            pass
    return losses, any(issubclass(w.category, StepSizeWarning) for w in caught)


def _one_blas_thread():
    """Parallelism is across runs (--jobs): BLAS threads inside a worker would only contend for the cores."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def wald(values) -> tuple[float, float]:
    """(mean, two-sided p-value of mean = 0) with the normal approximation W = mean / (s/√k)."""
    values = np.asarray(values, dtype=np.float64)
    mean, spread = float(values.mean()), float(values.std(ddof=1)) / math.sqrt(len(values))
    if spread == 0.0:
        return mean, 0.0 if mean != 0.0 else 1.0
    return mean, math.erfc(abs(mean / spread) / math.sqrt(2))


def verdict(mean: float, p: float) -> str:
    if p >= SIGNIFICANCE:
        return "="
    return "better" if mean < 0 else "worse"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2, as on CI)")
    parser.add_argument("--datasets", nargs="+", default=["digits", "breast_cancer", "wine"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    cases = [(name, l2) for name in args.datasets for l2 in L2]
    start = time.perf_counter()
    curves, chosen, rho, per_seed, crossings = {}, {}, {}, {}, {}
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=_one_blas_thread) as pool:
        for done, (name, l2) in enumerate(cases, start=1):
            tuning = {algo: grid(algo) for algo in METHODS}
            tasks = [
                (name, l2, algo, c, seed, args.epochs)
                for algo in METHODS
                for c in tuning[algo]
                for seed in TUNING_SEEDS
            ]
            results = iter(pool.map(epoch_losses, tasks, chunksize=4))
            for algo in METHODS:  # the worse of the tuning seeds' minima: no edge-of-stability picks
                scores = [max(next(results)[0].min() for _ in TUNING_SEEDS) for _ in tuning[algo]]
                chosen[name, l2, algo] = tuning[algo][int(np.argmin(scores))]
            runs = [(name, l2, algo, chosen[name, l2, algo], seed, args.epochs) for algo in METHODS for seed in SEEDS]
            for task, (losses, crossed) in zip(runs, pool.map(epoch_losses, runs)):
                curves.setdefault((name, l2, task[2]), []).append(losses)
                crossings.setdefault((name, l2, task[2]), []).append(crossed)
            best_adam = np.array([c.min() for c in curves[name, l2, "adam"]])
            for algo in METHODS[1:]:
                mine = np.array([c.min() for c in curves[name, l2, algo]])
                per_seed[name, l2, algo] = (mine - best_adam) / best_adam
                rho[name, l2, algo] = wald(per_seed[name, l2, algo])
            print(
                f"[{done}/{len(cases)}] {name} λ={l2:g}: {len(tasks)} tuning runs and {len(runs)} evaluation runs "
                f"({time.perf_counter() - start:.0f} s so far)",
                flush=True,
            )
    report(cases, chosen, rho, crossings, args.epochs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [
        {
            "dataset": name,
            "l2": l2,
            "method": algo,
            "configuration": chosen[name, l2, algo],
            "min_loss_per_seed": [float(c.min()) for c in curves[name, l2, algo]],
            "step_size_bound_crossed_per_seed": crossings[name, l2, algo],
            **(
                {
                    "rho_per_seed": per_seed[name, l2, algo].tolist(),
                    "rho": rho[name, l2, algo][0],
                    "p": rho[name, l2, algo][1],
                }
                if algo != "adam"
                else {}
            ),
        }
        for name, l2 in cases
        for algo in METHODS
    ]
    (out / "trainable_optimizer.json").write_text(
        json.dumps({"epochs": args.epochs, "seeds": SEEDS, "results": results}, indent=1)
    )
    print(f"per-seed results written to {out / 'trainable_optimizer.json'}")
    plot(cases, curves, out)
    print(f"total {time.perf_counter() - start:.0f} s with {args.jobs} worker(s)")
    return 0


def report(cases, chosen, rho, crossings, epochs):
    print(
        f"\nρ = (min L − min L_Adam)/min L_Adam over {epochs} epochs, mean of seeds {SEEDS}; two-sided Wald test, "
        f"p < {SIGNIFICANCE}: better / worse than Adam, otherwise ="
    )
    header = ["dataset (λ)"] + [LABELS[a] for a in METHODS[1:]]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for name, l2 in cases:
        cells = []
        for algo in METHODS[1:]:
            mean, p = rho[name, l2, algo]
            crossed = sum(crossings[name, l2, algo])
            note = f", c ≥ 2 in {crossed} of {len(SEEDS)} runs" if crossed else ""
            cells.append(f"{mean:+.3f} (p {p:.2g}) {verdict(mean, p)}{note}")
        print(f"| {name} ({l2:g}) | " + " | ".join(cells) + " |")
    any_variant = sum(any(verdict(*rho[case + (a,)]) == "better" for a in METHODS[2:]) for case in cases)
    print(f"\na TO variant significantly better than Adam in {any_variant} of {len(cases)} cases; per variant:")
    for algo in METHODS[1:]:
        counts = {v: sum(verdict(*rho[case + (algo,)]) == v for case in cases) for v in ("better", "=", "worse")}
        print(f"  {LABELS[algo]}: better {counts['better']}, no difference {counts['=']}, worse {counts['worse']}")
    print("\nchosen configurations (tuning seeds 0, 6; decay per epoch; fraction of the step-size bound):")
    for name, l2 in cases:
        shown = "; ".join(f"{LABELS[a]} {chosen[name, l2, a]}" for a in METHODS)
        print(f"  {name} ({l2:g}): {shown}")


def plot(cases, curves, out: Path):
    plt = pyplot()
    if plt is None:
        return
    figure, axes = plt.subplots(2, math.ceil(len(cases) / 2), figsize=(5 * math.ceil(len(cases) / 2), 8), squeeze=False)
    for axis, (name, l2) in zip(axes.T.ravel(), cases):
        for algo in METHODS:
            median = np.median(curves[name, l2, algo], axis=0)  # a seed that diverges does not hide the others
            axis.semilogy(np.arange(len(median)), median, label=LABELS[algo])
        axis.set(title=f"{name}, λ = {l2:g}", xlabel="epoch", ylabel=f"training loss (median of {len(SEEDS)} seeds)")
        axis.legend(fontsize=8)
    figure.tight_layout()
    path = out / "trainable_optimizer.png"
    figure.savefig(path, dpi=110)
    print(f"plot written to {path}")


if __name__ == "__main__":
    raise SystemExit(main())
