"""The reference implementation: pure NumPy, float64, one function per spec equation.

Every constructor validates its hyperparameters against the domains of its spec section and
returns an optimizer with ``init``, ``F`` and ``G`` (spec/formalism.md).
"""

from .._core import iterate, run
from .classical import adam, adamw, lion, momentum, nag, rmsprop, sgd
from .elra import elra, elra_lean
from .hypergradient import hypergradient
from .idbd import idbd, idbd_nonlinear
from .metaoptimize import algorithm2, algorithm3, metaoptimize
from .propagators import TABLE_1, Propagator, complex_jordan, direct_sum, jordan, propagator
from .rllc import linear_memory, lm_rllc, relaxed_pinv, rllc
from .trainable_optimizer import diagonal_to, rank_one_to, trainable_optimizer

ALGORITHMS = {
    "sgd": sgd,
    "momentum": momentum,
    "nag": nag,
    "adam": adam,
    "adamw": adamw,
    "rmsprop": rmsprop,
    "lion": lion,
    "rllc": rllc,
    "lm_rllc": lm_rllc,
    "linear_memory": linear_memory,
    "metaoptimize": metaoptimize,
    "idbd": idbd,
    "idbd_nonlinear": idbd_nonlinear,
    "hypergradient": hypergradient,
    "trainable_optimizer": trainable_optimizer,
    "diagonal_to": diagonal_to,
    "rank_one_to": rank_one_to,
    "elra": elra,
    "elra_lean": elra_lean,
}
"""Algorithm id (the spec section anchor) → reference constructor."""

__all__ = [
    "ALGORITHMS",
    "TABLE_1",
    "Propagator",
    "adam",
    "adamw",
    "algorithm2",
    "algorithm3",
    "complex_jordan",
    "diagonal_to",
    "elra",
    "elra_lean",
    "direct_sum",
    "hypergradient",
    "idbd",
    "idbd_nonlinear",
    "iterate",
    "jordan",
    "linear_memory",
    "lion",
    "lm_rllc",
    "metaoptimize",
    "momentum",
    "nag",
    "propagator",
    "rank_one_to",
    "relaxed_pinv",
    "rllc",
    "rmsprop",
    "run",
    "sgd",
    "trainable_optimizer",
]
