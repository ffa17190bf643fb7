"""The torch example's MLP on scikit-learn's digits, trained with five ``stepspec.optax`` transformations.

    python examples/jax_digits.py            # about a minute on 2 cores
    python examples/jax_digits.py --epochs 5 # a quick look

The same network (8×8 digit images, 64 → 64 → 10, tanh; 1437 training and 360 test images), optimizers and
hyperparameters as ``examples/torch_digits.py``: AdamW, LM-RLLC (M(0.9) ⊕ M(0)), MetaOptimize (AdamW base, Lion
meta, Hessian-free), ELRA following its batch-size controller, and Diagonal TO — here as optax transformations,
each step one ``jax.jit``-compiled call (the loss passed as ``value`` for the algorithms that observe it),
chained after ``optax.clip_by_global_norm``. The training loss over the whole training set and the test
accuracy are recorded once per epoch of training data consumed (ELRA may average several mini-batches per
step) and written to ``examples/results/jax_digits.json`` and ``.png``, drawn like the torch example's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _digits_plot import plot
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import stepspec.optax as so
from stepspec.reference import propagator

RESULTS = Path(__file__).parent / "results"
BATCH = 32  # the minimal batch: ELRA's controller averages a multiple of it
CLIP = 10.0  # a global-norm clip far above this network's gradients: the chain is shown, the runs unchanged

OPTIMIZERS = {
    "AdamW": lambda batches: so.adamw(lr=3e-3),
    "LM-RLLC M(0.9) ⊕ M(0)": lambda batches: so.lm_rllc(*propagator("M(0.9) ⊕ M(0)"), c1=0.5, c2=1e-3),
    "MetaOptimize (AdamW, Lion)": lambda batches: so.metaoptimize("adamw", "lion", alpha0=1e-3, eta=1e-2),
    # γ_max = 10 for networks (spec/elra.md), one control period per epoch of minimal batches
    "ELRA (batch control)": lambda batches: so.elra(max_ratio=10.0, period=batches, batch_control=True),
    "Diagonal TO": lambda batches: so.diagonal_to(lr=1.0, lr_a=1e-4, lr_b=0.1),
}


def data(seed: int):
    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def init_params(seed: int) -> dict:
    """torch.nn.Linear's initialisation: uniform in ±1/√fan_in for weights and biases."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    bound1, bound2 = 1 / np.sqrt(64), 1 / np.sqrt(64)
    return {
        "w1": jax.random.uniform(keys[0], (64, 64), minval=-bound1, maxval=bound1),
        "b1": jax.random.uniform(keys[1], (64,), minval=-bound1, maxval=bound1),
        "w2": jax.random.uniform(keys[2], (64, 10), minval=-bound2, maxval=bound2),
        "b2": jax.random.uniform(keys[3], (10,), minval=-bound2, maxval=bound2),
    }


def logits(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()


def minimal_batches(x, y, seed: int):
    """An endless stream of mini-batches of ``BATCH`` images, reshuffled every epoch (the same stream for
    every optimizer)."""
    generator = np.random.default_rng(seed)
    while True:
        order = generator.permutation(len(x))
        for start in range(0, len(x) - BATCH + 1, BATCH):
            index = order[start : start + BATCH]
            yield x[index], y[index]


def batch_multiple(state) -> int:
    """The minimal batches ELRA's next observation must average (its state's ``multiple``); 1 for the others."""
    for inner in jax.tree_util.tree_leaves(state, is_leaf=lambda s: isinstance(s, so.StepspecState)):
        if isinstance(inner, so.StepspecState) and hasattr(inner.inner, "multiple"):
            return int(inner.inner.multiple)
    return 1


def train(name, make, x_train, y_train, x_test, y_test, epochs: int, seed: int) -> dict:
    batches_per_epoch = len(x_train) // BATCH
    transformation = optax.chain(optax.clip_by_global_norm(CLIP), make(batches_per_epoch))
    params = init_params(seed)
    state = transformation.init(params)

    @jax.jit
    def step(params, state, x, y):
        """One step on the average loss over the stacked minimal batches x (m, BATCH, 64)."""

        def averaged(p):
            return jnp.mean(jax.vmap(lambda xb, yb: loss(p, xb, yb))(x, y))

        value, grad = jax.value_and_grad(averaged)(params)
        updates, state = transformation.update(grad, state, params, value=value, value_fn=averaged)
        return optax.apply_updates(params, updates), state

    evaluate = jax.jit(lambda p: (loss(p, x_train, y_train), jnp.mean(logits(p, x_test).argmax(1) == y_test)))
    stream = minimal_batches(x_train, y_train, seed)
    record = {"epochs": [], "train_loss": [], "test_accuracy": [], "batch_multiple": [], "steps": 0}
    consumed, started = 0, time.perf_counter()
    while consumed < epochs * batches_per_epoch:
        multiple = batch_multiple(state)
        batch = [next(stream) for _ in range(multiple)]
        params, state = step(params, state, np.stack([b[0] for b in batch]), np.stack([b[1] for b in batch]))
        record["steps"] += 1
        before, consumed = consumed, consumed + multiple
        if consumed // batches_per_epoch > before // batches_per_epoch:
            train_loss, accuracy = (float(v) for v in evaluate(params))
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
    record["skipped_steps"] = sum(
        int(s.total_skipped)
        for s in jax.tree_util.tree_leaves(state, is_leaf=lambda s: isinstance(s, so.StepspecState))
        if isinstance(s, so.StepspecState)
    )
    return record


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    x_train, x_test, y_train, y_test = data(args.seed)
    results = {
        name: train(name, make, x_train, y_train, x_test, y_test, args.epochs, args.seed)
        for name, make in OPTIMIZERS.items()
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "jax_digits.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(
        results,
        args.out / "jax_digits.png",
        "MLP 64-64-10 on scikit-learn's digits, stepspec.optax transformations under jax.jit",
    )
    print(f"wrote {args.out / 'jax_digits.json'} and {args.out / 'jax_digits.png'}")
    for name, r in results.items():
        print(
            f"{name:28s} final train loss {r['train_loss'][-1]:.4f}  test accuracy "
            f"{100 * r['test_accuracy'][-1]:5.1f}%  {r['steps']} steps  {r['seconds']:.1f} s  "
            f"{r['skipped_steps']} skipped"
        )
    return results


if __name__ == "__main__":
    main()
