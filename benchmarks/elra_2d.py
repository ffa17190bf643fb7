"""Paper 004, Sec. 4.1: ELRA against Adam, RMSprop and AdaDelta on 2-D bowl, Rosenbrock and saddle.

    python benchmarks/elra_2d.py [--out benchmarks/results]

Reproduces Table 1 (bowl f = 3x1² + 24x2² from (−5.75, 1.75) to f < 1e-1 and 1e-6), Table 2
(Rosenbrock to f < 1 from (−3, −2) and (−11, 121)) and the step counts of Fig. 3 (saddle
f = x1² − x2² from (1, 1e-9) to f < −1, plain and with function and start rotated by 45°). A count
is the smallest t with f(x_t) < ε, x_0 the start; every update counts, ELRA's retraces included
("r" gives how many of them there were). The cap is 10⁴ steps. ELRA runs the reference with both
conventions (authors_code on the saddle with loss + 2: it takes √ of the best loss); Adam, RMSprop
and AdaDelta are torch.optim in float64 with the paper's settings. Prints a Markdown table, writes
elra_2d.json and draws elra_2d.png (f over t on the saddle and the bowl; needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _plotting import pyplot

from stepspec.conformance.elra_experiments import AUTHORS_CODE_SHIFT, CAP, CASES, first_below, losses_until, setting
from stepspec.reference import elra, iterate


def run_stepspec(optimizer, case, convention):
    """f(x_t) for t = 0 … until f < ε or CAP, and the retraces among the steps."""
    seen, x0, eps, measure = setting(case, convention)
    return losses_until(iterate(optimizer, seen, x0, CAP), measure, eps)


def run_torch(make, problem, x0, eps):
    """The same with a torch.optim optimizer fed the problem's gradient, in float64."""
    x = torch.tensor(np.asarray(x0, dtype=np.float64), requires_grad=True)
    optimizer = make([x])
    losses = [problem.loss(x.detach().numpy())]
    while losses[-1] >= eps and len(losses) <= CAP:
        x.grad = torch.from_numpy(problem.grad(x.detach().numpy()))
        optimizer.step()
        losses.append(problem.loss(x.detach().numpy()))
    return np.array(losses), None


def optimizers(case):
    """name → runner(problem, x_0, ε), the paper's settings for the case."""
    stepspec = {
        "ELRA": lambda f, x0, eps: run_stepspec(elra(), case, "paper"),
        "ELRA authors_code": lambda f, x0, eps: run_stepspec(elra(convention="authors_code"), case, "authors_code"),
    }
    if case.startswith("saddle"):
        torch_makers = {
            "Adam": lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.999)),
            "AdaDelta": lambda p: torch.optim.Adadelta(p),
        }
    else:
        torch_makers = {
            "Adam": lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.9)),
            "RMSprop α=0.99": lambda p: torch.optim.RMSprop(p, lr=0.05),
            "RMSprop α=0.9": lambda p: torch.optim.RMSprop(p, lr=0.05, alpha=0.9),
        }
    torch_runners = {name: (lambda f, x0, eps, m=m: run_torch(m, f, x0, eps)) for name, m in torch_makers.items()}
    return {**stepspec, **torch_runners}


COLUMNS = ["ELRA", "ELRA authors_code", "Adam", "RMSprop α=0.99", "RMSprop α=0.9", "AdaDelta"]


def cell(result):
    if result is None:
        return "—"
    shown = "> 1e4" if result["steps"] is None else str(result["steps"])
    if result["steps"] is None:
        shown += f" (f = {result['final_loss']:.3g})"
    if result["retraces"] is not None:
        shown += f", r {result['retraces']}"
    return shown


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    results, curves = {}, {}
    for case, (problem, x0, eps, _) in CASES.items():
        results[case] = {}
        for name, runner in optimizers(case).items():
            losses, retraces = runner(problem, x0, eps)
            results[case][name] = {
                "steps": first_below(losses, eps),
                "retraces": retraces,
                "final_loss": float(losses[-1]),
            }
            curves[case, name] = losses

    print("Steps t to the first f(x_t) < ε (cap 1e4; r: ELRA retraces among them; — : not run / not given).")
    print("Adam: lr 0.05, betas (0.8, 0.9); on the saddle lr 0.01, betas (0.9, 0.999). RMSprop: lr 0.05.")
    print(f"ELRA authors_code on the saddle: loss + {AUTHORS_CODE_SHIFT:g}.\n")
    header = ["case", "paper Adam", "paper RMSprop", "paper ELRA", *COLUMNS]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for case, (*_, paper) in CASES.items():
        row = [case, *paper, *(cell(results[case].get(name)) for name in COLUMNS)]
        print("| " + " | ".join(row) + " |")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paper = {case: dict(zip(("Adam", "RMSprop", "ELRA"), spec[-1])) for case, spec in CASES.items()}
    numbers = {"cap": CAP, "paper": paper, "measured": results}
    (out / "elra_2d.json").write_text(json.dumps(numbers, indent=1, ensure_ascii=False))
    print(f"\nnumbers written to {out / 'elra_2d.json'}")

    plt = pyplot()
    if plt is None:
        return 0
    figure, (saddle, bowl) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, name in enumerate(["ELRA", "Adam", "AdaDelta"]):
        for case, style in (("saddle", "-"), ("saddle rotated 45°", "--")):
            label = name + (" (45°)" if case.endswith("45°") else "")
            saddle.plot(curves[case, name], style, color=f"C{i}", label=label)
    saddle.axhline(-1.0, color="grey", linestyle=":")
    saddle.set(title="saddle x1² − x2² from (1, 1e-9)", xlabel="step t", ylabel="f(x_t)", ylim=(-2, 1.2))
    saddle.set_xscale("symlog", linthresh=10)
    saddle.set_xlim(left=0)
    saddle.legend()
    for i, name in enumerate(COLUMNS[:5]):
        bowl.semilogy(curves["bowl, ε = 1e-6", name].clip(min=1e-17), color=f"C{i}", label=name)
    bowl.axhline(1e-6, color="grey", linestyle=":")
    bowl.set(title="bowl 3x1² + 24x2² from (−5.75, 1.75)", xlabel="step t", ylabel="f(x_t)", xlim=(0, 300))
    bowl.legend()
    figure.tight_layout()
    path = out / "elra_2d.png"
    figure.savefig(path, dpi=120)
    print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
