"""The array-API backend (spec/backends.md#array-api): every algorithm of the spec written once against the
Python array API standard, on parameter structures (lists of arrays of any shapes), in float64 and float32.

One implementation, three namespaces:

- ``array-api-strict`` (and ``-float32``): ``array_api_strict``, which rejects every call outside the
  standard and every silent dtype promotion — the check that the code is portable;
- ``numpy-array-api`` (and ``-float32``): NumPy through ``array_api_compat.numpy``;
- ``cupy`` (and ``-float32``): CuPy on the first GPU, its elementwise passes compiled by ``cupy.fuse``.

The first two run everywhere, so the code path cupy runs is tested on every machine; cupy needs a GPU.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import numpy as np

from ... import __version__
from . import classical, elra, hypergradient, idbd, metaoptimize, rllc, trainable_optimizer
from ._core import Namespace

ALGORITHMS: dict[str, Callable] = {
    "sgd": classical.sgd,
    "momentum": classical.momentum,
    "nag": classical.nag,
    "adam": classical.adam,
    "adamw": classical.adamw,
    "rmsprop": classical.rmsprop,
    "lion": classical.lion,
    "rllc": rllc.rllc,
    "lm_rllc": rllc.lm_rllc,
    "linear_memory": rllc.linear_memory,
    "idbd": idbd.idbd,
    "idbd_nonlinear": idbd.idbd_nonlinear,
    "hypergradient": hypergradient.hypergradient,
    "trainable_optimizer": trainable_optimizer.trainable_optimizer,
    "diagonal_to": trainable_optimizer.diagonal_to,
    "rank_one_to": trainable_optimizer.rank_one_to,
    "elra": elra.elra,
    "elra_lean": elra.elra_lean,
    "metaoptimize": metaoptimize.metaoptimize,
}
"""Algorithm id → constructor taking the spec's hyperparameters and, keyword-only, the ``Namespace``."""


def _bound(constructor: Callable, ns: Namespace) -> Callable:
    """``constructor`` with its namespace fixed: the spec's signature, as the API properties read it."""
    signature = inspect.signature(constructor)

    @functools.wraps(constructor)
    def construct(*args, **hyperparameters):
        return constructor(*args, ns=ns, **hyperparameters)

    construct.__signature__ = signature.replace(parameters=[p for p in signature.parameters.values() if p.name != "ns"])
    return construct


class ArrayAPIBackend:
    """The array-API backend on one namespace and dtype (spec/conformance.md#backends)."""

    structured = True  # steps run over lists of arrays of any shapes

    def __init__(self, name: str, ns: Namespace, library: str):
        self.name, self.ns, self.dtype = name, ns, ns.dtype
        self.device = str(ns.device) if ns.device is not None else ("cuda" if ns.kernels is not None else "cpu")
        self.version = f"{__version__} ({library})"
        self.algorithms = {algo: _bound(c, ns) for algo, c in ALGORITHMS.items()}

    def asarray(self, x):
        """A host array as a native array: real floating input in the working precision, other kinds
        (complex, bool, int) kept, so that bad input reaches the optimizer."""
        array = np.array(x)
        if array.dtype.kind == "f":
            array = array.astype(self.dtype)
        return self.ns.asarray(array)

    def to_numpy(self, x) -> np.ndarray:
        if isinstance(x, (int, float, np.ndarray, np.generic)):
            return np.asarray(x)
        return self.ns.to_numpy(x)


def _strict(dtype: str) -> ArrayAPIBackend:
    import array_api_strict

    name = "array-api-strict" + ("-float32" if dtype == "float32" else "")
    return ArrayAPIBackend(name, Namespace(array_api_strict, dtype), f"array-api-strict {array_api_strict.__version__}")


def _numpy(dtype: str) -> ArrayAPIBackend:
    import array_api_compat
    import array_api_compat.numpy

    name = "numpy-array-api" + ("-float32" if dtype == "float32" else "")
    library = f"numpy {np.__version__}, array-api-compat {array_api_compat.__version__}"
    return ArrayAPIBackend(name, Namespace(array_api_compat.numpy, dtype), library)


def _cupy(dtype: str) -> ArrayAPIBackend:
    import array_api_compat.cupy
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError("cupy sees no CUDA device")
    name = "cupy" + ("-float32" if dtype == "float32" else "")
    ns = Namespace(array_api_compat.cupy, dtype, kernels=cupy)
    return ArrayAPIBackend(name, ns, f"cupy {cupy.__version__}")


def strict_backend() -> ArrayAPIBackend:
    return _strict("float64")


def strict_float32_backend() -> ArrayAPIBackend:
    return _strict("float32")


def numpy_backend() -> ArrayAPIBackend:
    return _numpy("float64")


def numpy_float32_backend() -> ArrayAPIBackend:
    return _numpy("float32")


def cupy_backend() -> ArrayAPIBackend:
    """The backend on the first CUDA device; raises (one line) without cupy or without a GPU."""
    return _cupy("float64")


def cupy_float32_backend() -> ArrayAPIBackend:
    return _cupy("float32")
