"""The error taxonomy of spec/errors.md.

Every error carries ``param``, the name of the offending hyperparameter, observation field,
state field or argument, and names it in its message, so a conformance check can be strict
about *what* was rejected without depending on the wording.
"""

from __future__ import annotations


class StepspecError(Exception):
    """Base class: something the spec rejects, attributed to one named input."""

    def __init__(self, param: str, message: str):
        self.param = param
        super().__init__(f"{param}: {message}")


class HyperparameterError(StepspecError, ValueError):
    """A constructor argument outside the domain its spec table declares (phase CONSTRUCT)."""


class NotationError(HyperparameterError):
    """Malformed propagator notation such as ``"M(0.9) ⊕"`` (param ``notation``)."""


class StateError(StepspecError, ValueError):
    """An initial state given to ``init`` that is not a valid state (phase INIT)."""


class ObservationError(StepspecError, ValueError):
    """A bad observation at a step: non-finite, wrong shape or dtype, or a missing field (phase STEP)."""


class StepSizeWarning(UserWarning):
    """A step size outside the range where a documented guarantee holds; the step is still taken
    as the spec defines it (spec/errors.md#warnings)."""


class DivergenceError(StepspecError, ArithmeticError):
    """A run (``stepspec.run``, ``stepspec.iterate``) that left the finite numbers at step ``step``: θ_t or a
    floating-point field of S_t is not finite, or the problem's gradient, loss or curvature product at
    θ_{t−1} is (spec/formalism.md#running). ``param`` names that quantity."""

    def __init__(self, param: str, step: int, message: str):
        self.step = step
        super().__init__(param, f"the run diverged at step {step}: {message}")


class SpectralRadiusWarning(UserWarning):
    """Propagator notation that parses to a valid matrix B with spectral radius ρ(B) ≥ 1, such as
    ``"M(1.5)"``: ``lm_rllc`` and ``linear_memory`` will reject it (spec/propagators.md#notation)."""
