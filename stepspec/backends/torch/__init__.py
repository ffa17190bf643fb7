"""The torch backend (spec/backends.md): every algorithm of the spec written natively in torch, on
parameter structures (lists of tensors of any shapes), in float64 and float32, on the CPU and on CUDA.

``stepspec conform --backend torch`` (float64), ``torch-float32``, and ``torch-cuda`` /
``torch-cuda-float32`` where a GPU is present. The drop-in ``torch.optim.Optimizer`` classes built on
these functional optimizers live in ``stepspec.torch``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import numpy as np
import torch

from ... import __version__
from . import _fused, classical, elra, hypergradient, idbd, metaoptimize, rllc, trainable_optimizer

ALGORITHMS: dict[str, Callable] = {
    "sgd": classical.sgd,
    "momentum": classical.momentum,
    "nag": classical.nag,
    "adam": classical.adam,
    "adamw": classical.adamw,
    "rmsprop": classical.rmsprop,
    "lion": classical.lion,
    "metaoptimize": metaoptimize.metaoptimize,
    "idbd": idbd.idbd,
    "idbd_nonlinear": idbd.idbd_nonlinear,
    "hypergradient": hypergradient.hypergradient,
    "lm_rllc": rllc.lm_rllc,
    "rllc": rllc.rllc,
    "linear_memory": rllc.linear_memory,
    "trainable_optimizer": trainable_optimizer.trainable_optimizer,
    "diagonal_to": trainable_optimizer.diagonal_to,
    "rank_one_to": trainable_optimizer.rank_one_to,
    "elra": elra.elra,
    "elra_lean": elra.elra_lean,
}
"""Algorithm id → constructor taking the spec's hyperparameters and, keyword-only, ``dtype`` and ``device``."""
_fused.KERNELS.update(classical.KERNELS)
_fused.KERNELS.update(trainable_optimizer.KERNELS)
_fused.KERNELS.update(metaoptimize.KERNELS)
_fused.KERNELS.update(rllc.KERNELS)
_fused.KERNELS.update(elra.KERNELS)

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _bound(constructor: Callable, dtype: torch.dtype, device: str) -> Callable:
    """``constructor`` with dtype and device fixed: the spec's signature, as the API properties read it."""
    signature = inspect.signature(constructor)

    @functools.wraps(constructor)
    def construct(*args, **hyperparameters):
        return constructor(*args, dtype=dtype, device=device, **hyperparameters)

    construct.__signature__ = signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name not in ("dtype", "device")]
    )
    return construct


class TorchBackend:
    """The torch backend for one dtype and device (spec/conformance.md#backends)."""

    structured = True  # steps run over lists of tensors of any shapes

    def __init__(self, dtype: str = "float64", device: str = "cpu"):
        self.dtype, self.device = dtype, device
        device_part = "-cuda" if device.startswith("cuda") else ""
        self.name = "torch" + device_part + ("-float32" if dtype == "float32" else "")
        self.version = f"{__version__} (torch {torch.__version__})"
        self.algorithms = {algo: _bound(c, DTYPES[dtype], device) for algo, c in ALGORITHMS.items()}

    def asarray(self, x) -> torch.Tensor:
        """A host array as a tensor on the device: real floating input in the working precision, other
        kinds (complex, bool, int) kept, so that bad input reaches the optimizer."""
        array = np.array(x)
        tensor = torch.from_numpy(array)
        if array.dtype.kind == "f":
            tensor = tensor.to(DTYPES[self.dtype])
        return tensor.to(self.device)

    @staticmethod
    def to_numpy(x) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)


def cuda_backend(dtype: str = "float64") -> TorchBackend:
    """The backend on the first CUDA device."""
    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device (torch.cuda.is_available() is False)")
    return TorchBackend(dtype, "cuda")


def cuda_float32_backend() -> TorchBackend:
    return cuda_backend("float32")


BACKEND = TorchBackend("float64")
FLOAT32 = TorchBackend("float32")
