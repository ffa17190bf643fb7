"""Check stepspec's authors' conventions against the authors' own code.

    python benchmarks/authors_code_check.py [PATH/TO/HF.py] [--hypergradient PATH/TO/hypergrad] [--steps 60]

HF.py is the Hessian-free optimizer in the MetaOptimize authors' public repository (github.com/sabersalehk/
MetaOptimize, codes/Supervised_tasks.zip at commit 61a57f87, MetaOptimize/cifar10/Optimizers/HF.py): for
every (base, meta) pair the code implements, HF and metaoptimize(…, convention="authors_code") run on the
same quadratic in float64 from the same start, and the script prints the largest deviation of θ and of
α = exp(β) over the run. HF keeps a scalar β in float32; the script re-creates it in float64 after
construction so that the comparison is not limited by that rounding.

The hypergrad directory is Baydin et al.'s package (github.com/gbaydin/hypergradient-descent at 020d608,
hypergrad/sgd_hd.py and adam_hd.py): SGDHD (plain, heavy-ball and Nesterov momentum, L2 weight decay) and
AdamHD (with and without weight decay) against hypergradient(…) (Adam-HD with convention="authors_code"),
the same way; the last column compares SGDHD without Nesterov and weight decay with its MetaOptimize form
(metaoptimize(sgdm, sgd, …) with α₀ and η rescaled by 1/(1 − μ) and 1/(1 − μ)²). Neither code is part of
stepspec: fetch it yourself. Needs torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch

from stepspec import iterate
from stepspec import problems as P
from stepspec.reference import hypergradient, metaoptimize

BASES = {"SGD": "sgd", "SGDm": "sgdm", "RMSProp": "rmsprop", "AdamW": "adamw", "Lion": "lion"}
METAS = {"Adam": "adam", "RMSProp": "rmsprop", "Lion": "lion", "fixed": "fixed"}
BASE_ARGS = {"weight_decay": 0.1, "momentum_param": 0.9, "normalizer_param": 0.999, "Lion_beta2": 0.9}
META_ARGS = {
    "meta_stepsize": 1e-2,
    "weight_decay": 0.05,
    "momentum_param": 0.99,
    "normalizer_param": 0.999,
    "Lion_beta2": 0.9,
}
REQUIRED_BASE = {
    "SGD": ["weight_decay"],
    "SGDm": ["weight_decay", "momentum_param"],
    "RMSProp": ["normalizer_param", "weight_decay"],
    "AdamW": ["normalizer_param", "momentum_param", "weight_decay"],
    "Lion": ["momentum_param", "Lion_beta2", "weight_decay"],
}
REQUIRED_META = {
    "Adam": ["meta_stepsize", "normalizer_param", "momentum_param", "weight_decay"],
    "RMSProp": ["meta_stepsize", "normalizer_param", "weight_decay"],
    "Lion": ["meta_stepsize", "momentum_param", "Lion_beta2", "weight_decay"],
    "fixed": [],
}
ALPHA0 = 1e-2
AGREEMENT = 1e-10
"""Round-off: the un-normalised Adam meta of HF amplifies it to ~1e-12."""

HD_CASES = [  # (optimizer, its keyword arguments); α₀ = 0.01 throughout
    ("SGDHD", {"hypergrad_lr": 1e-3}),
    ("SGDHD", {"hypergrad_lr": 1e-3, "weight_decay": 0.05}),
    ("SGDHD", {"hypergrad_lr": 1e-3, "momentum": 0.9}),
    ("SGDHD", {"hypergrad_lr": 1e-3, "momentum": 0.9, "weight_decay": 0.05}),
    ("SGDHD", {"hypergrad_lr": 1e-3, "momentum": 0.9, "nesterov": True}),
    ("SGDHD", {"hypergrad_lr": 1e-3, "momentum": 0.5, "nesterov": True, "weight_decay": 0.05}),
    ("AdamHD", {"hypergrad_lr": 1e-4}),
    ("AdamHD", {"hypergrad_lr": 1e-4, "weight_decay": 0.05}),
]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _quadratic():
    return P.random_quadratic(5, condition=20.0, seed=4), np.random.default_rng(2).standard_normal(5)


class _NoLog:
    """HF logs through a tensorboard-like writer; this one discards."""

    def add_scalar(self, *args, **kwargs):
        pass


class Parameters(torch.nn.Module):
    def __init__(self, theta0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(theta0, dtype=torch.float64))


def _torch_loss(problem, w):
    A, b = torch.tensor(problem.A), torch.tensor(problem.b)
    return 0.5 * w @ A @ w - b @ w


# --------------------------------------------------------------------------- MetaOptimize (HF.py)


def authors_run(HF, problem, theta0, base, meta, steps):
    net = Parameters(theta0)
    args_base = {"alg": base, **{k: BASE_ARGS[k] for k in REQUIRED_BASE[base]}}
    args_meta = {"alg": meta, **{k: META_ARGS[k] for k in REQUIRED_META[meta]}}
    optimizer = HF(net, "scalar", ALPHA0, args_base, args_meta, gamma=1.0, writer=_NoLog())
    optimizer.beta = [torch.log(torch.tensor(ALPHA0, dtype=torch.float64))]
    thetas, alphas = [theta0.copy()], []
    for _ in range(steps):
        alphas.append(float(np.exp(optimizer.beta[0].item())))
        optimizer.step(net, _torch_loss(problem, net.w))
        thetas.append(net.w.detach().numpy().copy())
    return np.array(thetas), np.array(alphas)


def stepspec_run(problem, theta0, base, meta, steps):
    """metaoptimize with the authors' convention: its ε = ε̄ = 1e-10 are the convention's defaults."""
    optimizer = metaoptimize(
        BASES[base],
        METAS[meta],
        ALPHA0,
        convention="authors_code",
        eta=META_ARGS["meta_stepsize"],
        kappa=BASE_ARGS["weight_decay"],
        rho=BASE_ARGS["momentum_param"],
        lam=BASE_ARGS["normalizer_param"],
        c=BASE_ARGS["Lion_beta2"],
        meta_kappa=META_ARGS["weight_decay"],
        meta_rho=META_ARGS["momentum_param"],
        meta_lam=META_ARGS["normalizer_param"],
        meta_c=META_ARGS["Lion_beta2"],
    )
    thetas, alphas = [], []
    for t, theta, s in iterate(optimizer, problem, theta0, steps):
        thetas.append(theta)
        if t:
            alphas.append(s.alpha[0])  # the step size step t was taken with
    return np.array(thetas), np.array(alphas)


def check_metaoptimize(hf_path: Path, steps: int) -> float:
    HF = _load(hf_path, "authors_hf").HF
    problem, theta0 = _quadratic()
    print(f"{'base':<8} {'meta':<8} {'α_T/α₀':>8} {'max |Δθ|/max|θ|':>16} {'max |Δα|/α':>12}")
    worst = 0.0
    for base in BASES:
        for meta in METAS:
            theirs, their_alphas = authors_run(HF, problem, theta0, base, meta, steps)
            ours, our_alphas = stepspec_run(problem, theta0, base, meta, steps)
            d_theta = np.abs(ours - theirs).max() / np.abs(theirs).max()
            d_alpha = (np.abs(our_alphas - their_alphas) / their_alphas).max()
            worst = max(worst, d_theta, d_alpha)
            print(f"{base:<8} {meta:<8} {their_alphas[-1] / ALPHA0:8.3f} {d_theta:16.2e} {d_alpha:12.2e}", flush=True)
    return worst


# --------------------------------------------------------------------------- hypergradient descent (hypergrad)


def baydin_run(package, name, options, problem, theta0, steps):
    net = Parameters(theta0)
    optimizer = getattr(package, name)(net.parameters(), lr=ALPHA0, **options)
    thetas, alphas = [theta0.copy()], []
    for _ in range(steps):
        optimizer.zero_grad()
        _torch_loss(problem, net.w).backward()
        optimizer.step()
        alphas.append(float(optimizer.param_groups[0]["lr"]))
        thetas.append(net.w.detach().numpy().copy())
    return np.array(thetas), np.array(alphas)


def hypergradient_run(name, options, problem, theta0, steps):
    optimizer = hypergradient(
        "sgd" if name == "SGDHD" else "adam",
        ALPHA0,
        options["hypergrad_lr"],
        convention="authors_code",
        momentum=options.get("momentum", 0.0),
        nesterov=options.get("nesterov", False),
        weight_decay=options.get("weight_decay", 0.0),
    )
    thetas, alphas = [], []
    for t, theta, s in iterate(optimizer, problem, theta0, steps):
        thetas.append(theta)
        if t:
            alphas.append(s.alpha)
    return np.array(thetas), np.array(alphas)


def metaoptimize_run(options, problem, theta0, steps):
    """SGD-HD with heavy-ball momentum μ as metaoptimize(sgdm, sgd, ρ = μ, α₀/(1 − μ), η/(1 − μ)², γ = 0,
    identity σ, meta_first) (spec/hypergradient.md#hypergradient); None where no such form exists."""
    if options.get("nesterov") or options.get("weight_decay"):
        return None
    mu = options.get("momentum", 0.0)
    optimizer = metaoptimize(
        "sgdm" if mu else "sgd",
        "sgd",
        ALPHA0 / (1 - mu),
        eta=options["hypergrad_lr"] / (1 - mu) ** 2,
        gamma=0.0,
        sigma="identity",
        order="meta_first",
        rho=mu,
    )
    return np.array([theta for _, theta, _ in iterate(optimizer, problem, theta0, steps)])


def check_hypergradient(directory: Path, steps: int) -> float:
    adam, sgd = _load(directory / "adam_hd.py", "hypergrad_adam_hd"), _load(directory / "sgd_hd.py", "hypergrad_sgd_hd")
    packages = {"SGDHD": sgd, "AdamHD": adam}
    problem, theta0 = _quadratic()
    print(f"{'optimizer':<8} {'options':<68} {'α_T/α₀':>8} {'max |Δθ|/max|θ|':>16} {'max |Δα|/α':>12} {'as MO':>9}")
    worst = 0.0
    for name, options in HD_CASES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the package's deprecated torch overloads
            theirs, their_alphas = baydin_run(packages[name], name, options, problem, theta0, steps)
        ours, our_alphas = hypergradient_run(name, options, problem, theta0, steps)
        d_theta = np.abs(ours - theirs).max() / np.abs(theirs).max()
        d_alpha = (np.abs(our_alphas - their_alphas) / np.abs(their_alphas)).max()
        worst = max(worst, d_theta, d_alpha)
        as_mo = metaoptimize_run(options, problem, theta0, steps) if name == "SGDHD" else None
        d_mo = "—" if as_mo is None else f"{np.abs(as_mo - theirs).max() / np.abs(theirs).max():.2e}"
        if as_mo is not None:
            worst = max(worst, np.abs(as_mo - theirs).max() / np.abs(theirs).max())
        shown = ", ".join(f"{k}={v}" for k, v in options.items())
        print(
            f"{name:<8} {shown:<68} {their_alphas[-1] / ALPHA0:8.3f} {d_theta:16.2e} {d_alpha:12.2e} {d_mo:>9}",
            flush=True,
        )
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hf_path", nargs="?", type=Path, help="MetaOptimize's HF.py")
    parser.add_argument("--hypergradient", type=Path, help="the hypergrad directory of Baydin et al.'s code")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    if args.hf_path is None and args.hypergradient is None:
        parser.error("give HF.py, --hypergradient DIR, or both")
    worst = 0.0
    if args.hf_path is not None:
        worst = max(worst, check_metaoptimize(args.hf_path, args.steps))
    if args.hypergradient is not None:
        worst = max(worst, check_hypergradient(args.hypergradient, args.steps))
    print(f"largest relative deviation: {worst:.2e}")
    return 0 if worst < AGREEMENT else 1


if __name__ == "__main__":
    raise SystemExit(main())
