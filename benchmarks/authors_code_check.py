"""Check stepspec's convention="authors_code" against the MetaOptimize authors' own code.

    python benchmarks/authors_code_check.py PATH/TO/HF.py [--steps 60]

HF.py is the Hessian-free optimizer in the authors' public repository (github.com/sabersalehk/
MetaOptimize, codes/Supervised_tasks.zip at commit 61a57f87, MetaOptimize/cifar10/Optimizers/HF.py;
not part of stepspec: fetch it yourself). For every (base, meta) pair the code implements, both run
on the same quadratic in float64 from the same start, and the script prints the largest deviation
of θ and of α = exp(β) over the run. HF keeps a scalar β in float32; the script re-creates it in
float64 after construction so that the comparison is not limited by that rounding. Needs torch.
"""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np
import torch

from stepspec import iterate
from stepspec import problems as P
from stepspec.reference.metaoptimize import algorithm3

BASES = {"SGD": "sgd", "SGDm": "sgdm", "RMSProp": "rmsprop", "AdamW": "adamw", "Lion": "lion"}
METAS = {"Adam": "adam", "RMSProp": "rmsprop", "Lion": "lion"}
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
}
ALPHA0 = 1e-2


class _NoLog:
    """HF logs through a tensorboard-like writer; this one discards."""

    def add_scalar(self, *args, **kwargs):
        pass


class Parameters(torch.nn.Module):
    def __init__(self, theta0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(theta0, dtype=torch.float64))


def authors_run(HF, problem, theta0, base, meta, steps):
    net = Parameters(theta0)
    args_base = {"alg": base, **{k: BASE_ARGS[k] for k in REQUIRED_BASE[base]}}
    args_meta = {"alg": meta, **{k: META_ARGS[k] for k in REQUIRED_META[meta]}}
    optimizer = HF(net, "scalar", ALPHA0, args_base, args_meta, gamma=1.0, writer=_NoLog())
    optimizer.beta = [torch.log(torch.tensor(ALPHA0, dtype=torch.float64))]
    A, b = torch.tensor(problem.A), torch.tensor(problem.b)
    thetas, alphas = [theta0.copy()], []
    for _ in range(steps):
        loss = 0.5 * net.w @ A @ net.w - b @ net.w
        alphas.append(float(np.exp(optimizer.beta[0].item())))
        optimizer.step(net, loss)
        thetas.append(net.w.detach().numpy().copy())
    return np.array(thetas), np.array(alphas)


def stepspec_run(problem, theta0, base, meta, steps):
    optimizer = algorithm3(
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
    for _, theta, s in iterate(optimizer, problem, theta0, steps):
        thetas.append(theta)
        alphas.append(float(np.exp(s.beta[0])))
    return np.array(thetas), np.array(alphas[:-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hf_path")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    spec = importlib.util.spec_from_file_location("authors_hf", args.hf_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    problem = P.random_quadratic(5, condition=20.0, seed=4)
    theta0 = np.random.default_rng(2).standard_normal(5)
    print(f"{'base':<8} {'meta':<8} {'max |Δθ|/max|θ|':>16} {'max |Δα|/α':>12}")
    worst = 0.0
    for base in BASES:
        for meta in METAS:
            theirs, their_alphas = authors_run(module.HF, problem, theta0, base, meta, args.steps)
            ours, our_alphas = stepspec_run(problem, theta0, base, meta, args.steps)
            d_theta = np.abs(ours - theirs).max() / np.abs(theirs).max()
            d_alpha = (np.abs(our_alphas - their_alphas) / their_alphas).max()
            worst = max(worst, d_theta, d_alpha)
            print(f"{base:<8} {meta:<8} {d_theta:16.2e} {d_alpha:12.2e}", flush=True)
    print(f"largest relative deviation: {worst:.2e}")
    return 0 if worst < 1e-10 else 1  # round-off: the un-normalised Adam meta amplifies it to ~1e-12


if __name__ == "__main__":
    raise SystemExit(main())
