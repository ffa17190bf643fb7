"""A small MLP on scikit-learn's bundled digits, trained with five ``stepspec.torch`` optimizers.

    python examples/torch_digits.py            # under a minute on 2 cores
    python examples/torch_digits.py --epochs 5 # a quick look

AdamW, LM-RLLC (M(0.9) ⊕ M(0)), MetaOptimize (AdamW base, Lion meta, Hessian-free), ELRA following its
batch-size controller, and Diagonal TO train the same network from the same initial weights on the same
mini-batches (8×8 digit images, 64 → 64 → 10, tanh; 1437 training and 360 test images). The training loss
(over the whole training set) and the test accuracy are recorded once per epoch of training data
consumed — ELRA may average several mini-batches per step, so its steps are fewer — and written to
``examples/results/torch_digits.json`` (with the batch multiple ELRA last asked for) and ``.png``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch
from _digits_plot import plot
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import stepspec.torch as st
from stepspec.reference import propagator

RESULTS = Path(__file__).parent / "results"
BATCH = 32  # the minimal batch: ELRA's controller averages a multiple of it

OPTIMIZERS = {
    "AdamW": lambda params, batches: st.AdamW(params, lr=3e-3),
    "LM-RLLC M(0.9) ⊕ M(0)": lambda params, batches: st.LMRLLC(params, *propagator("M(0.9) ⊕ M(0)"), c1=0.5, c2=1e-3),
    "MetaOptimize (AdamW, Lion)": lambda params, batches: st.MetaOptimize(
        params, "adamw", "lion", alpha0=1e-3, eta=1e-2
    ),
    # γ_max = 10 for networks (spec/elra.md), one control period per epoch of minimal batches
    "ELRA (batch control)": lambda params, batches: st.ELRA(params, max_ratio=10.0, period=batches, batch_control=True),
    "Diagonal TO": lambda params, batches: st.DiagonalTO(params, lr=1.0, lr_a=1e-4, lr_b=0.1),
}


def data(seed: int):
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def model_for(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))


def minimal_batches(x, y, seed: int):
    """An endless stream of mini-batches of ``BATCH`` images, reshuffled every epoch (the same stream for
    every optimizer)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - BATCH + 1, BATCH):
            index = order[start : start + BATCH]
            yield x[index], y[index]


def train(name, make, x_train, y_train, x_test, y_test, epochs: int, seed: int) -> dict:
    model = model_for(seed)
    batches_per_epoch = len(x_train) // BATCH
    optimizer = make(list(model.parameters()), batches_per_epoch)
    loss_fn = torch.nn.CrossEntropyLoss()
    stream = minimal_batches(x_train, y_train, seed)
    record = {"epochs": [], "train_loss": [], "test_accuracy": [], "batch_multiple": [], "steps": 0}
    consumed, started = 0, time.perf_counter()

    def closure(batch):
        optimizer.zero_grad()
        loss = sum(loss_fn(model(x), y) for x, y in batch) / len(batch)
        loss.backward()
        return loss

    while consumed < epochs * batches_per_epoch:
        # ELRA says how many minimal batches its next observation must average; the others take one
        multiple = getattr(optimizer, "batch_multiple", 1)
        batch = [next(stream) for _ in range(multiple)]
        optimizer.step(functools.partial(closure, batch))
        record["steps"] += 1
        before, consumed = consumed, consumed + multiple
        if consumed // batches_per_epoch > before // batches_per_epoch:
            with torch.no_grad():
                train_loss = loss_fn(model(x_train), y_train).item()
                accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
            record["epochs"].append(consumed / batches_per_epoch)
            record["train_loss"].append(train_loss)
            record["test_accuracy"].append(accuracy)
            record["batch_multiple"].append(multiple)
            print(
                f"{name:28s} epoch {consumed / batches_per_epoch:5.1f}/{epochs}  train loss {train_loss:.4f}  "
                f"test accuracy {100 * accuracy:5.1f}%  batch ×{multiple}",
                flush=True,
            )
    record["seconds"] = time.perf_counter() - started
    return record


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a 64-64-10 network: one thread per process is fastest, and 2 cores stay free
    x_train, x_test, y_train, y_test = data(args.seed)
    results = {
        name: train(name, make, x_train, y_train, x_test, y_test, args.epochs, args.seed)
        for name, make in OPTIMIZERS.items()
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "torch_digits.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out / "torch_digits.png", "MLP 64-64-10 on scikit-learn's digits, stepspec.torch optimizers")
    print(f"wrote {args.out / 'torch_digits.json'} and {args.out / 'torch_digits.png'}")
    for name, r in results.items():
        print(
            f"{name:28s} final train loss {r['train_loss'][-1]:.4f}  test accuracy "
            f"{100 * r['test_accuracy'][-1]:5.1f}%  {r['steps']} steps  {r['seconds']:.1f} s"
        )
    return results


if __name__ == "__main__":
    main()
