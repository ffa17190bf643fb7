"""Peers: optimizers stepspec did not write, run under the suite through one adapter (``_adapter``;
spec/classical.md#peers). Every implementation of a peer is a backend of its own, in float64 and, with the
suffix ``-float32``, in float32:

- ``torch.optim-forloop``, ``torch.optim-foreach``, ``torch.optim-fused``: torch.optim's SGD (sgd, momentum,
  nag), Adam, AdamW and RMSprop (``torch_optim``);
- ``lion-pytorch``, ``pytorch-optimizer-forloop``, ``pytorch-optimizer-foreach``: the Lion of those two
  packages, optional (``lion``): a backend whose package is not installed fails to load in one line;
- ``optax``: optax's sgd (sgd, momentum, nag), adam, adamw, rmsprop and lion on jax, optional (``optax_peer``).

``ALIASES`` name several backends at once (``--backend torch.optim`` runs the three torch.optim ones).
Importing this module imports neither torch nor the peers; a backend is built when the registry loads it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

FAMILIES = {
    "torch.optim": ("forloop", "foreach", "fused"),
    "lion-pytorch": (None,),
    "pytorch-optimizer": ("forloop", "foreach"),
    "optax": (None,),
}
"""Peer → its implementations (None: it has one)."""


MODULES = {"torch.optim": ".torch_optim", "optax": ".optax_peer"}
"""Peer → the module that builds its backends (the Lion packages: ``.lion``)."""


PRECISIONS = {"float64": "", "float32": "-float32"}
"""dtype → the suffix of its backends' names."""


def _name(peer: str, implementation: str | None, dtype: str) -> str:
    return f"{peer}-{implementation}{PRECISIONS[dtype]}" if implementation else f"{peer}{PRECISIONS[dtype]}"


def _factory(peer: str, implementation: str | None, dtype: str) -> Callable:
    def load():
        module = importlib.import_module(MODULES.get(peer, ".lion"), __name__)
        return module.backend(_name(peer, implementation, dtype), peer, implementation, dtype)

    return load


BACKENDS: dict[str, Callable] = {
    _name(peer, implementation, dtype): _factory(peer, implementation, dtype)
    for peer, implementations in FAMILIES.items()
    for implementation in implementations
    for dtype in PRECISIONS
}
"""Backend name → zero-argument factory."""

ALIASES: dict[str, tuple[str, ...]] = {
    f"{peer}{suffix}": tuple(_name(peer, implementation, dtype) for implementation in implementations)
    for peer, implementations in FAMILIES.items()
    if len(implementations) > 1
    for dtype, suffix in PRECISIONS.items()
}
"""An alias → the backends it stands for, every implementation of the peer in one precision."""
