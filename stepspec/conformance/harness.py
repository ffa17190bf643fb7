"""Driving a backend from the suite: construction, host ↔ native conversion of observations and
states, and runs. Expected values always come from the NumPy reference and are converted only at
the boundary (spec/conformance.md#discipline)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import assume

from .. import spec
from .._core import Observation, observe
from ..backends.reference import BACKEND as REFERENCE
from ..errors import StepspecError
from .catalog import CATALOG
from .tolerance import deviation, series_scale


def state_field_names(algo: str) -> tuple[str, ...]:
    return tuple(f.name for f in spec.section(algo).state_fields)


def _host(backend, value):
    if value is None or isinstance(value, (bool, int, float, np.integer, np.floating)):
        return value
    return np.array(backend.to_numpy(value), dtype=np.float64)


def state_to_host(backend, algo: str, s) -> dict:
    """The spec's state fields of ``s`` as host values (float64 arrays, ints, None)."""
    return {name: _host(backend, getattr(s, name)) for name in state_field_names(algo)}


def state_to_native(backend, fields: dict) -> dict:
    """Host state fields as ``init`` overrides for ``backend``."""
    return {name: backend.asarray(value) if isinstance(value, np.ndarray) else value for name, value in fields.items()}


def _native_function(backend, host_function):
    """A host function of host vectors as a function of native vectors, returning native."""
    if host_function is None:
        return None

    def native(*vectors):
        host = (np.asarray(backend.to_numpy(v), dtype=np.float64) for v in vectors)
        return backend.asarray(host_function(*host))

    return native


def native_observation(backend, obs: Observation) -> Observation:
    return Observation(
        grad=None if obs.grad is None else backend.asarray(obs.grad),
        params=None if obs.params is None else backend.asarray(obs.params),
        loss=obs.loss,
        hvp=_native_function(backend, obs.hvp),
        third=_native_function(backend, obs.third),
    )


def to_host_vector(backend, x) -> np.ndarray:
    return np.array(backend.to_numpy(x), dtype=np.float64).reshape(-1)


@dataclass
class Run:
    """A run on host values: θ_0 … θ_T, S_0 … S_T (spec fields), obs_1 … obs_T and G_1 … G_T."""

    thetas: list = field(default_factory=list)
    states: list = field(default_factory=list)
    observations: list = field(default_factory=list)
    deltas: list = field(default_factory=list)
    source: tuple | None = None  # (algo, hyperparameters, problem, initial_state) of a reference run


def _drive(backend, algo: str, optimizer, observe_at, theta0: np.ndarray, steps: int, initial_state) -> Run:
    """θ_0 … θ_T on the backend, with obs_t = observe_at(t, θ_{t-1} on the host)."""
    theta = backend.asarray(theta0)
    s = optimizer.init(theta, **state_to_native(backend, initial_state or {}))
    out = Run([np.array(theta0, dtype=np.float64)], [state_to_host(backend, algo, s)])
    for t in range(1, steps + 1):
        host_obs = observe_at(t, out.thetas[-1])
        obs = native_observation(backend, host_obs)
        s = optimizer.F(s, obs)
        delta = optimizer.G(s, obs)
        theta = theta + delta
        out.observations.append(host_obs)
        out.deltas.append(to_host_vector(backend, delta))
        out.states.append(state_to_host(backend, algo, s))
        out.thetas.append(to_host_vector(backend, theta))
    return out


def run(backend, algo: str, optimizer, problem, theta0: np.ndarray, steps: int, initial_state=None) -> Run:
    """Run ``optimizer`` (made by ``backend``) for ``steps`` steps in closed loop: the problem is
    evaluated on the host at the backend's own iterate, and nothing is re-synchronised."""

    def observe_at(t, theta):
        return observe(problem.batch(t) if hasattr(problem, "batch") else problem, theta, optimizer.needs)

    return _drive(backend, algo, optimizer, observe_at, theta0, steps, initial_state)


def open_loop(backend, algo: str, optimizer, gradients, theta0: np.ndarray, initial_state=None) -> Run:
    """Feed a fixed gradient stream g_1 … g_T (open loop: g_t does not depend on θ); for properties of
    F alone. θ still moves by G so that ``params`` is meaningful."""

    def observe_at(t, theta):
        params = theta if "params" in optimizer.needs else None
        return Observation(grad=np.asarray(gradients[t - 1], dtype=np.float64), params=params)

    return _drive(backend, algo, optimizer, observe_at, theta0, len(gradients), initial_state)


def construct(backend, info, hyperparameters: dict):
    """The backend's optimizer for catalogue row ``info`` with host ``hyperparameters``."""
    return backend.algorithms[info.algo](**info.materialize(hyperparameters, backend))


def finite_run(run_: Run, bound: float = 1e30) -> bool:
    """True when a run stayed finite and bounded; properties compare only such runs (a diverging
    reference run says nothing about conformance, and its gradients would be rejected as non-finite)."""
    return all(np.all(np.abs(theta) < bound) for theta in run_.thetas)


def replay(backend, algo: str, optimizer, observations, theta0: np.ndarray, initial_state=None) -> Run:
    """Feed the host observations of another run (the reference's), step for step."""
    return _drive(
        backend, algo, optimizer, lambda t, theta: observations[t - 1], theta0, len(observations), initial_state
    )


def reference_run(algo: str, hyperparameters: dict, problem, theta0, steps: int, initial_state=None) -> Run:
    """The reference's run for a property, or a hypothesis rejection when it diverges: overflow, a
    non-finite gradient or memory rejected by the reference, or |θ| beyond 1e30 (spec/tolerances.md)."""
    optimizer = construct(REFERENCE, CATALOG[algo], hyperparameters)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            result = run(REFERENCE, algo, optimizer, problem, theta0, steps, initial_state)
    except StepspecError:
        assume(False)
    assume(finite_run(result))
    result.source = (algo, hyperparameters, problem, initial_state)
    return result


PERTURBATION = 1e-9
"""Relative size of the perturbations with which ``perturbation_growth`` probes a run."""


class _Perturbed:
    """``problem`` observed at θ + δ_t instead of θ: every evaluation of step t is off by a fixed
    vector δ_t of entries ±size (signs seeded by t), as if θ carried an error at every step."""

    def __init__(self, problem, size: float):
        self.problem, self.size = problem, size

    def batch(self, t: int):
        f_t = self.problem.batch(t) if hasattr(self.problem, "batch") else self.problem
        return _ShiftedStep(f_t, self.size * np.random.default_rng(t).choice((-1.0, 1.0), size=f_t.n))


class _ShiftedStep:
    def __init__(self, f, delta):
        self.f, self.delta, self.n = f, delta, f.n

    def grad(self, theta):
        return self.f.grad(theta + self.delta)

    def loss(self, theta):
        return self.f.loss(theta + self.delta)

    def hvp(self, theta, v):
        return self.f.hvp(theta + self.delta, v)


def perturbation_growth(reference: Run) -> float:
    """G of spec/tolerances.md: how much the dynamics of a reference run amplify errors. The run is
    repeated with every observation taken at θ_t + δ_t, |δ_t,i| = 1e-9 · max_t ‖θ_t‖_∞ (an error
    injected at every step, as round-off is), and G is the largest relative deviation of θ or of an
    array state field, divided by the relative size of δ (at least 1). A run that diverges when
    perturbed is rejected, not compared."""
    algo, hyperparameters, problem, initial_state = reference.source
    scale = series_scale(reference.thetas)
    optimizer = construct(REFERENCE, CATALOG[algo], hyperparameters)
    perturbed_problem = _Perturbed(problem, PERTURBATION * scale)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            perturbed = run(
                REFERENCE,
                algo,
                optimizer,
                perturbed_problem,
                reference.thetas[0],
                len(reference.thetas) - 1,
                initial_state,
            )
    except StepspecError:
        assume(False)
    assume(finite_run(perturbed))
    series = [(perturbed.thetas, reference.thetas)] + [
        ([s[name] for s in perturbed.states], [s[name] for s in reference.states])
        for name, value in reference.states[0].items()
        if isinstance(value, np.ndarray)
    ]
    growth = max(
        max(deviation(a, e, series_scale(expected))[0] for a, e in zip(actual, expected)) for actual, expected in series
    )
    return max(growth / PERTURBATION, 1.0)
