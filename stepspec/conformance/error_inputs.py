"""Bad input as data (spec/errors.md): each ``ErrorInput`` names the phase it fails in, the exception
class of ``stepspec.errors`` and the parameter the error must name. One generic test
(test_errors.py) runs every entry of every catalogue row on the backend under test.

Three sources: ``shared_error_inputs`` (every algorithm: non-finite, mis-shaped or mis-typed
observations and initial states, missing observation fields); ``domain_error_inputs`` (derived from
the domain column of the spec table, so the catalogue cannot drift from the spec); and each row's
hand-written ``extra_error_inputs`` (spectral radius, shapes of B and a, a bad memory rule).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .. import spec
from .._core import Observation
from ..errors import HyperparameterError, ObservationError, StateError


class Phase(enum.Enum):
    CONSTRUCT = "construct"  # the constructor rejects the hyperparameters
    INIT = "init"  # init rejects θ_0 or an initial-state override
    STEP = "step"  # F (and G, when ``check_G``) reject the observation; the state is untouched


@dataclass(frozen=True)
class ErrorInput:
    desc: str
    phase: Phase
    error: type
    param: str
    hyperparameters: Mapping = field(default_factory=dict)  # overrides of the row's first sample
    theta0: Callable[[np.ndarray], object] | None = None  # INIT: θ_0 ↦ bad θ_0
    state: Callable[[dict], dict] | None = None  # INIT: valid S_0 fields ↦ bad overrides
    observation: Callable[[Observation], Observation] | None = None  # STEP: valid obs ↦ bad obs
    check_G: bool = True  # STEP: G must reject the observation too (not when the fault shows only once called)


def _with_entry(x: np.ndarray, value) -> np.ndarray:
    bad = np.array(x, dtype=np.float64)
    bad[..., 0] = value
    return bad


def _replace(**changes):
    return lambda obs: dataclasses.replace(obs, **changes)


def _observation_inputs(name: str, knows_n: bool) -> list[ErrorInput]:
    """Non-finite, mis-shaped and mis-typed values of the vector observation field ``name``; a length
    mismatch only when the optimizer has an n to compare with (``knows_n``)."""

    def changed(make):
        return lambda obs: dataclasses.replace(obs, **{name: make(getattr(obs, name))})

    step = Phase.STEP
    length = (
        [
            ErrorInput(
                f"{name} one entry too many",
                step,
                ObservationError,
                name,
                observation=changed(lambda x: np.append(x, 1.0)),
            )
        ]
        if knows_n
        else []
    )
    return length + [
        ErrorInput(f"{name} NaN", step, ObservationError, name, observation=changed(lambda x: _with_entry(x, np.nan))),
        ErrorInput(f"{name} +Inf", step, ObservationError, name, observation=changed(lambda x: _with_entry(x, np.inf))),
        ErrorInput(
            f"{name} -Inf", step, ObservationError, name, observation=changed(lambda x: _with_entry(x, -np.inf))
        ),
        ErrorInput(
            f"{name} as a column (n, 1)",
            step,
            ObservationError,
            name,
            observation=changed(lambda x: np.reshape(x, (-1, 1))),
        ),
        ErrorInput(
            f"{name} complex",
            step,
            ObservationError,
            name,
            observation=changed(lambda x: np.asarray(x, dtype=np.complex128)),
        ),
        ErrorInput(f"{name} boolean", step, ObservationError, name, observation=changed(lambda x: np.asarray(x) > 0)),
        ErrorInput(f"{name} missing", step, ObservationError, name, observation=changed(lambda x: None)),
    ]


def _loss_inputs() -> list[ErrorInput]:
    """The scalar observation field ``loss``: non-finite, not a scalar, not real, missing."""
    cases = [
        ("NaN", np.nan),
        ("+Inf", np.inf),
        ("a vector", np.ones(2)),
        ("complex", np.complex128(1.0)),
        ("boolean", np.True_),
        ("missing", None),
    ]
    return [
        ErrorInput(f"loss {desc}", Phase.STEP, ObservationError, "loss", observation=_replace(loss=value))
        for desc, value in cases
    ]


def shared_error_inputs(algo: str, needs: frozenset) -> list[ErrorInput]:
    """Entries every algorithm has; ``needs`` is the Observation fields the sample optimizer reads.

    A stateless optimizer that does not read θ (sgd) has no n to check g_t against: its length
    mismatch surfaces in the caller's θ + G, and is not an error input of the algorithm."""
    state_has_n = any(f.shape in ("n", "n × k", "n × n") for f in spec.section(algo).state_fields)
    inputs = _observation_inputs("grad", state_has_n or "params" in needs)
    if "params" in needs:
        inputs += _observation_inputs("params", True)
    if "loss" in needs:
        inputs += _loss_inputs()
    inputs.append(
        ErrorInput(
            "observation not an Observation",
            Phase.STEP,
            ObservationError,
            "obs",
            observation=lambda obs: {"grad": obs.grad},
        )
    )
    init = Phase.INIT
    inputs += [
        ErrorInput("theta0 NaN", init, StateError, "theta0", theta0=lambda x: _with_entry(x, np.nan)),
        ErrorInput("theta0 Inf", init, StateError, "theta0", theta0=lambda x: _with_entry(x, np.inf)),
        ErrorInput("theta0 as a column (n, 1)", init, StateError, "theta0", theta0=lambda x: np.reshape(x, (-1, 1))),
        ErrorInput("theta0 complex", init, StateError, "theta0", theta0=lambda x: np.asarray(x, dtype=np.complex128)),
        ErrorInput("unknown state field", init, StateError, "no_such_field", state=lambda s: {"no_such_field": 1.0}),
    ]
    for f in spec.section(algo).state_fields:
        if f.shape == "scalar int":
            inputs += [
                ErrorInput(f"state {f.name} negative", init, StateError, f.name, state=lambda s, n=f.name: {n: -1}),
                ErrorInput(
                    f"state {f.name} not an integer", init, StateError, f.name, state=lambda s, n=f.name: {n: 1.5}
                ),
            ]
        elif f.shape in ("n", "k", "n × k", "n × n"):
            inputs += [
                ErrorInput(
                    f"state {f.name} NaN",
                    init,
                    StateError,
                    f.name,
                    state=lambda s, n=f.name: {n: _with_entry(s[n], np.nan)},
                ),
                ErrorInput(
                    f"state {f.name} wrong shape",
                    init,
                    StateError,
                    f.name,
                    state=lambda s, n=f.name: {n: np.append(s[n], 0.0)},
                ),
            ]
    return inputs


def domain_error_inputs(algo: str) -> list[ErrorInput]:
    """For every interval or product domain in the spec table: values just outside it, NaN, ±Inf,
    and a value of the wrong type; for every choice: an unknown name, a wrong case, None."""
    inputs = []
    for h in spec.section(algo).hyperparameters:
        if isinstance(h.domain, spec.Interval):
            for value in h.domain.outside():
                inputs.append(
                    ErrorInput(
                        f"{h.name}={value!r} outside {h.domain}",
                        Phase.CONSTRUCT,
                        HyperparameterError,
                        h.name,
                        hyperparameters={h.name: value},
                    )
                )
            inputs.append(
                ErrorInput(
                    f"{h.name} a string", Phase.CONSTRUCT, HyperparameterError, h.name, hyperparameters={h.name: "0.5"}
                )
            )
        elif isinstance(h.domain, spec.Product):
            inside = [f.low if f.low_closed else (f.low + f.high) / 2 for f in h.domain.factors]
            for i, factor in enumerate(h.domain.factors):
                for value in factor.outside():
                    bad = tuple(value if j == i else x for j, x in enumerate(inside))
                    inputs.append(
                        ErrorInput(
                            f"{h.name}={bad!r}, entry {i} outside {factor}",
                            Phase.CONSTRUCT,
                            HyperparameterError,
                            h.name,
                            hyperparameters={h.name: bad},
                        )
                    )
            inputs.append(
                ErrorInput(
                    f"{h.name} with one entry too few",
                    Phase.CONSTRUCT,
                    HyperparameterError,
                    h.name,
                    hyperparameters={h.name: tuple(inside[:-1])},
                )
            )
    return inputs
