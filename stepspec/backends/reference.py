"""The NumPy float64 reference as a backend: the first backend, always available."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .. import __version__, reference


class ReferenceBackend:
    name = "reference"
    version = __version__
    dtype = "float64"

    def __init__(self, algorithms: Mapping[str, Callable] | None = None, name: str = "reference"):
        self.algorithms = dict(reference.ALGORITHMS if algorithms is None else algorithms)
        self.name = name

    @staticmethod
    def asarray(x) -> np.ndarray:
        return np.array(x)  # a copy; keeps the dtype, so bad input (complex, bool) reaches the optimizer

    @staticmethod
    def to_numpy(x) -> np.ndarray:
        return np.asarray(x)


BACKEND = ReferenceBackend()
