"""The digits examples' figure (``torch_digits.py``, ``jax_digits.py``): one drawing, so their plots compare."""

from __future__ import annotations

from pathlib import Path


def plot(results: dict, path: Path, title: str) -> None:
    """Training loss and test accuracy per epoch of training data, one line per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, r in results.items():
        left.semilogy(r["epochs"], r["train_loss"], label=name)
        right.plot(r["epochs"], [100 * a for a in r["test_accuracy"]], label=name)
    left.set(xlabel="epochs of training data", ylabel="training loss (cross-entropy)", title="Training loss")
    right.set(xlabel="epochs of training data", ylabel="test accuracy (%)", title="Test accuracy")
    right.set_ylim(80, 100)
    for axis in (left, right):
        axis.grid(alpha=0.3)
    right.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
