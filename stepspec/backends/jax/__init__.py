"""The jax backend (spec/backends.md#jax): the spec's algorithms as ``jax.jit``-compiled pure functions over
parameter pytrees, in float64 (inside a scoped ``jax.enable_x64``) and float32.

``stepspec conform --backend jax`` (float64) and ``jax-float32``. Algorithms not yet ported are absent
from ``algorithms``, so the suite reports them as absent (spec/conformance.md#backends).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import numpy as np

from ... import __version__
from . import classical, elra, rllc
from . import trainable_optimizer as to
from ._core import DTYPES, precision
from .hypergradient import hypergradient
from .idbd import idbd, idbd_nonlinear
from .metaoptimize import metaoptimize

ALGORITHMS: dict[str, Callable] = {
    "sgd": classical.sgd,
    "momentum": classical.momentum,
    "nag": classical.nag,
    "adam": classical.adam,
    "adamw": classical.adamw,
    "rmsprop": classical.rmsprop,
    "lion": classical.lion,
    "elra": elra.elra,
    "elra_lean": elra.elra_lean,
    "rllc": rllc.rllc,
    "lm_rllc": rllc.lm_rllc,
    "linear_memory": rllc.linear_memory,
    "trainable_optimizer": to.trainable_optimizer,
    "diagonal_to": to.diagonal_to,
    "rank_one_to": to.rank_one_to,
    "idbd": idbd,
    "idbd_nonlinear": idbd_nonlinear,
    "hypergradient": hypergradient,
    "metaoptimize": metaoptimize,
}
"""Algorithm id → constructor taking the spec's hyperparameters and, keyword-only, ``dtype``."""


def _bound(constructor: Callable, dtype: str) -> Callable:
    """``constructor`` with dtype fixed: the spec's signature, as the API properties read it."""
    signature = inspect.signature(constructor)

    @functools.wraps(constructor)
    def construct(*args, **hyperparameters):
        return constructor(*args, dtype=dtype, **hyperparameters)

    construct.__signature__ = signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name != "dtype"]
    )
    return construct


class JaxBackend:
    """The jax backend for one dtype, on jax's default device (spec/conformance.md#backends)."""

    structured = True  # steps run over any pytree of arrays

    def __init__(self, dtype: str = "float64"):
        self.dtype = dtype
        self.name = "jax" + ("-float32" if dtype == "float32" else "")
        self.version = f"{__version__} (jax {jax.__version__})"
        self.device = str(jax.devices()[0].platform)
        self.algorithms = {algo: _bound(c, dtype) for algo, c in ALGORITHMS.items()}

    def asarray(self, x) -> jax.Array:
        """A host array as a jax array: real floating input in the working precision, other kinds (complex,
        bool, int) kept, so that bad input reaches the optimizer. Made inside the precision scope, so a
        float64 array stays float64 outside it."""
        array = np.array(x)
        with precision(self.dtype):
            return jax.numpy.asarray(array, DTYPES[self.dtype] if array.dtype.kind == "f" else None)

    @staticmethod
    def to_numpy(x) -> np.ndarray:
        return np.asarray(x)


BACKEND = JaxBackend("float64")
FLOAT32 = JaxBackend("float32")
