"""The NumPy reference as a backend: ``reference`` (float64, the reference itself) and
``reference-float32`` (the same code constructed under ``working_precision(float32)``, so its states and
arithmetic are float32: the suite's check that every property is meaningful in float32,
spec/tolerances.md#float32)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np

from .. import __version__, reference
from .._core import working_precision


def _in_precision(constructor: Callable, dtype) -> Callable:
    @functools.wraps(constructor)  # keeps the signature the API properties read
    def construct(*args, **hyperparameters):
        with working_precision(dtype):
            return constructor(*args, **hyperparameters)

    return construct


class ReferenceBackend:
    version = __version__

    def __init__(
        self, algorithms: Mapping[str, Callable] | None = None, name: str = "reference", dtype: str = "float64"
    ):
        constructors = dict(reference.ALGORITHMS if algorithms is None else algorithms)
        self.name, self.dtype = name, dtype
        self._float = np.dtype(dtype).type
        self.algorithms = (
            constructors
            if dtype == "float64"
            else {algo: _in_precision(c, self._float) for algo, c in constructors.items()}
        )

    def asarray(self, x) -> np.ndarray:
        """A copy; real floating input in the working precision, other kinds kept, so bad input (complex,
        bool) reaches the optimizer."""
        x = np.array(x)
        return x.astype(self._float) if x.dtype.kind == "f" else x

    @staticmethod
    def to_numpy(x) -> np.ndarray:
        return np.asarray(x)


BACKEND = ReferenceBackend()
FLOAT32 = ReferenceBackend(name="reference-float32", dtype="float32")
