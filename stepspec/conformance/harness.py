"""Driving a backend from the suite: construction, host ↔ native conversion of observations and
states, and runs. Expected values always come from the NumPy reference and are converted only at
the boundary (spec/conformance.md#discipline)."""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import numpy as np
from hypothesis import assume

from .. import spec
from .._core import Observation, observe
from ..backends.reference import BACKEND as REFERENCE
from ..errors import StepspecError
from .assertions import CURRENT_TEST, ConformanceFailure, Context
from .catalog import CATALOG
from .strategies import PRECISION
from .tolerance import deviation, series_scale

_STEP = contextvars.ContextVar("stepspec_step", default=None)


@contextlib.contextmanager
def at_step(t: int):
    """Calls into the backend inside the block belong to step t (for messages)."""
    token = _STEP.set(t)
    try:
        yield
    finally:
        _STEP.reset(token)


class Guarded:
    """The backend's optimizer as properties see it: an exception it raises where the property gave it
    valid input is a conformance failure, reported like any other (algorithm, property, call, step,
    hyperparameters) instead of escaping bare. Everything else is the backend's own object."""

    def __init__(self, optimizer, algo: str, hyperparameters: dict):
        self._optimizer, self._algo, self._hyperparameters = optimizer, algo, hyperparameters

    def __getattr__(self, name):
        return getattr(self._optimizer, name)

    def init(self, theta0, **initial_state):
        return self._call("init", self._optimizer.init, theta0, **initial_state)

    def F(self, state, obs):
        return self._call("F", self._optimizer.F, state, obs)

    def G(self, state, obs):
        return self._call("G", self._optimizer.G, state, obs)

    def _call(self, what, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ConformanceFailure:
            raise
        except Exception as exc:
            raise unexpected(exc, self._algo, self._hyperparameters, what) from exc


def unexpected(exc: Exception, algo: str, hyperparameters: dict, what: str) -> ConformanceFailure:
    """An exception the backend raised on valid input, as a failure message of spec/conformance.md#messages."""
    prop = (CURRENT_TEST.get() or (algo, "?"))[1]
    t = _STEP.get()
    ctx = Context(algo, prop, hyperparameters)
    where = f"{what} at t={t}" if t is not None else what
    return ConformanceFailure(f"{ctx.prefix()} the backend raised {type(exc).__name__}: {exc} in {where}{ctx.suffix()}")


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
    with at_step(0):
        s = optimizer.init(theta, **state_to_native(backend, initial_state or {}))
    out = Run([np.array(theta0, dtype=np.float64)], [state_to_host(backend, algo, s)])
    for t in range(1, steps + 1):
        host_obs = observe_at(t, out.thetas[-1])
        obs = native_observation(backend, host_obs)
        with at_step(t):
            s = optimizer.F(s, obs)
            delta = optimizer.G(s, obs)
        theta = theta + delta
        out.observations.append(host_obs)
        out.deltas.append(to_host_vector(backend, delta))
        out.states.append(state_to_host(backend, algo, s))
        out.thetas.append(to_host_vector(backend, theta))
    return out


def structured_run(backend, algo: str, optimizer, problem, theta0: np.ndarray, steps: int, shapes) -> Run:
    """``run`` with the parameters as a structure: θ_0, every gradient, θ_{t-1} and the curvature
    products are passed as lists of native tensors of ``shapes`` (their sizes sum to n, in order), and G
    comes back as such a list. The host run, its observations and the states (spec fields, flat) are as
    in ``run``, so the result compares with the reference's run over the concatenation."""
    sizes = [int(np.prod(shape, dtype=int)) for shape in shapes]
    offsets = np.cumsum([0, *sizes])

    def split(vector):
        vector = np.asarray(vector, dtype=np.float64)
        return [backend.asarray(vector[a:b].reshape(shape)) for a, b, shape in zip(offsets, offsets[1:], shapes)]

    def join(parts):
        return np.concatenate([np.asarray(backend.to_numpy(p), dtype=np.float64).reshape(-1) for p in parts])

    def product(host_function):
        return None if host_function is None else (lambda *vectors: split(host_function(*(join(v) for v in vectors))))

    theta = split(theta0)
    s = optimizer.init(theta)
    out = Run([np.array(theta0, dtype=np.float64)], [state_to_host(backend, algo, s)])
    for t in range(1, steps + 1):
        f_t = problem.batch(t) if hasattr(problem, "batch") else problem
        host_obs = observe(f_t, out.thetas[-1], optimizer.needs)
        obs = Observation(
            grad=split(host_obs.grad),
            params=None if host_obs.params is None else split(host_obs.params),
            loss=host_obs.loss,
            hvp=product(host_obs.hvp),
            third=product(host_obs.third),
        )
        with at_step(t):
            s = optimizer.F(s, obs)
            delta = optimizer.G(s, obs)
        theta = [p + d for p, d in zip(theta, delta)]
        out.observations.append(host_obs)
        out.deltas.append(join(delta))
        out.states.append(state_to_host(backend, algo, s))
        out.thetas.append(join(theta))
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


def construct(backend, info, hyperparameters: dict, *, guarded: bool = True):
    """The backend's optimizer for catalogue row ``info`` with host ``hyperparameters``. Guarded (the
    default): an exception from the constructor, init, F or G is reported as a conformance failure;
    unguarded for code that expects the backend to raise (error inputs, the reference as the source
    of expected values, whose rejections mark a diverging example)."""
    constructor = backend.algorithms[info.algo]
    if not guarded:
        return constructor(**info.materialize(hyperparameters, backend))
    try:
        optimizer = constructor(**info.materialize(hyperparameters, backend))
    except Exception as exc:
        raise unexpected(exc, info.algo, hyperparameters, "the constructor") from exc
    return Guarded(optimizer, info.algo, hyperparameters)


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
    optimizer = construct(REFERENCE, CATALOG[algo], hyperparameters, guarded=False)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            result = run(REFERENCE, algo, optimizer, problem, theta0, steps, initial_state)
    except StepspecError:
        assume(False)
    assume(finite_run(result))
    result.source = (algo, hyperparameters, problem, initial_state)
    return result


PERTURBATION = {"float64": 1e-9, "float32": 1e-6}
"""Relative size of the perturbations with which the suite probes the reference, by the precision of the
backend under test: far above float64's own round-off, so that the measurement is not noise, and for
float32 about 16 u, the size of the round-off the comparison must absorb (a decision within that margin
of flipping is then found sensitive, as it is)."""


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

    def third(self, theta, u, v):
        return self.f.third(theta + self.delta, u, v)


def numeric_fields(state: dict) -> list[str]:
    """The state fields compared numerically: arrays, float scalars (ELRA's α) and int scalars (counters
    and decisions, which must match exactly)."""
    return [
        name
        for name, value in state.items()
        if isinstance(value, (np.ndarray, float, int, np.floating, np.integer)) and not isinstance(value, bool)
    ]


def perturbation_growth(reference: Run, dtype: str | None = None) -> float:
    """G of spec/tolerances.md: how much the dynamics of a reference run amplify errors. The run is
    repeated with every observation taken at θ_t + δ_t, |δ_t,i| = δ · max_t ‖θ_t‖_∞ with δ =
    ``PERTURBATION[dtype]`` (dtype: the backend's, by default; an error injected at every step, as
    round-off is), and G is the largest
    relative deviation of θ or of a numeric state field, divided by δ (at least 1). A run that diverges when
    perturbed is rejected, not compared."""
    algo, hyperparameters, problem, initial_state = reference.source
    size = PERTURBATION[dtype or PRECISION.get()]
    optimizer = construct(REFERENCE, CATALOG[algo], hyperparameters, guarded=False)
    perturbed_problem = _Perturbed(problem, size * series_scale(reference.thetas))
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
        for name in numeric_fields(reference.states[0])
    ]
    growth = max(
        max(deviation(a, e, series_scale(expected))[0] for a, e in zip(actual, expected)) for actual, expected in series
    )
    return max(growth / size, 1.0)


def update_scale(deltas, thetas) -> float:
    """The scale updates G_t are compared on: max(‖G‖, ‖θ‖) over the run. An update is added to θ, so it
    is only defined to within the round-off of θ (x − αĝ − x, the form a projected step takes, is exact
    only to u‖x‖) (spec/tolerances.md)."""
    return max(series_scale(list(deltas)), series_scale(list(thetas)))


def _perturb(value, size: float, rng: np.random.Generator):
    """Every float entry times 1 + size·U(−1, 1), as rounding perturbs it: a continuous factor, because a
    sign pattern can cancel exactly where entries nearly cancel (two gradients ‖g‖² ≈ ⟨g, g'⟩, n = 2)."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value * (1.0 + size * rng.uniform(-1.0, 1.0, size=value.shape))
    if isinstance(value, (float, np.floating)):
        return float(value) * (1.0 + size * rng.uniform(-1.0, 1.0))
    return value


SENSITIVITY_SAMPLES = 8
"""Random perturbations per step: a cancellation shows only in some directions (‖g'‖² − ⟨g, g'⟩ for two
nearly equal gradients), and a tie flips only under some (f = f̄ in ELRA's retrace test)."""


def _perturbed_step(optimizer, algo: str, reference: Run, t: int, size: float, rng) -> tuple[dict, np.ndarray]:
    """S_t and G_t of the reference from its step-t inputs, each float entry scaled by 1 ± size."""
    obs = reference.observations[t - 1]

    def perturbed_product(function):
        return None if function is None else (lambda *v: _perturb(np.asarray(function(*v)), size, rng))

    perturbed_obs = Observation(
        grad=_perturb(np.asarray(obs.grad, dtype=np.float64), size, rng),
        params=None if obs.params is None else _perturb(np.asarray(obs.params, dtype=np.float64), size, rng),
        loss=_perturb(obs.loss, size, rng),  # a backend may compute it in its own precision
        hvp=perturbed_product(obs.hvp),
        third=perturbed_product(obs.third),
    )
    previous = {name: _perturb(value, size, rng) for name, value in reference.states[t - 1].items()}
    with np.errstate(all="ignore"):
        s = optimizer.init(_perturb(reference.thetas[t - 1], size, rng), **previous)
        s = optimizer.F(s, perturbed_obs)
        delta = np.asarray(optimizer.G(s, perturbed_obs), dtype=np.float64)
    return state_to_host(REFERENCE, algo, s), delta


def step_sensitivities(reference: Run, dtype: str | None = None) -> list[float]:
    """κ_t of spec/tolerances.md for t = 1 … T: the reference's F and G of step t repeated from inputs
    perturbed entrywise by a relative δ·U(−1, 1), δ = ``PERTURBATION[dtype]`` (dtype: the backend's, by
    default) — every float field of S_{t−1}, θ_{t−1}, g_t, the parameters, the loss and the curvature
    products, as storing them in the backend's precision perturbs them — ``SENSITIVITY_SAMPLES`` times,
    seeded by t. κ_t is the largest deviation of S_t's numeric fields (a decision that flips counts) and of
    G_t, on the scales the comparison uses, divided by δ (at least 1). A step whose perturbed inputs are
    rejected, or whose result is not finite, is infinitely sensitive: it cannot be compared to round-off."""
    algo, hyperparameters, _, _ = reference.source
    size = PERTURBATION[dtype or PRECISION.get()]
    optimizer = construct(REFERENCE, CATALOG[algo], hyperparameters, guarded=False)
    fields = numeric_fields(reference.states[0])
    scales = {name: series_scale([s[name] for s in reference.states[1:]]) for name in fields}
    g_scale = update_scale(reference.deltas, reference.thetas)
    sensitivities = []
    for t in range(1, len(reference.thetas)):
        worst = 0.0
        for sample in range(SENSITIVITY_SAMPLES):
            try:
                host, delta = _perturbed_step(optimizer, algo, reference, t, size, np.random.default_rng((t, sample)))
            except StepspecError:
                worst = np.inf
                break
            worst = max(worst, deviation(delta, reference.deltas[t - 1], g_scale)[0])
            for name in fields:
                worst = max(worst, deviation(host[name], reference.states[t][name], scales[name])[0])
        sensitivities.append(max(worst / size, 1.0) if np.isfinite(worst) else np.inf)
    return sensitivities
