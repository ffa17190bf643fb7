"""stepspec: the executable specification of RLLC, MetaOptimize, the Trainable Optimizer and ELRA.

``stepspec.reference`` holds the NumPy float64 reference, ``stepspec.problems`` the test problems,
``stepspec.conformance`` the suite any implementation can be run against (spec/conformance.md).
"""

from ._core import Observation, iterate, run, state_fields
from .errors import (
    DivergenceError,
    HyperparameterError,
    NotationError,
    ObservationError,
    SpectralRadiusWarning,
    StateError,
    StepSizeWarning,
    StepspecError,
)

__version__ = "0.1.0"
SPEC_VERSION = "2026.12"

__all__ = [
    "DivergenceError",
    "HyperparameterError",
    "NotationError",
    "Observation",
    "ObservationError",
    "SPEC_VERSION",
    "SpectralRadiusWarning",
    "StateError",
    "StepSizeWarning",
    "StepspecError",
    "__version__",
    "iterate",
    "run",
    "state_fields",
]
