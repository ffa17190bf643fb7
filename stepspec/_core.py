"""The (F, G) contract of spec/formalism.md (paper 000, Def. 3.1), shared by every algorithm.

An optimizer is a pair (F, G) with S_t = F(S_{t-1}, obs_t) and θ_t = θ_{t-1} + G(S_t, obs_t).
``Observation`` extends Def. 3.1's g_t with the optional fields some algorithms need.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from . import spec
from .errors import DivergenceError, ObservationError, StateError

OBSERVATION_FIELDS = ("grad", "params", "loss", "hvp", "third")


@dataclass(frozen=True)
class Observation:
    """What the optimizer receives at step t (spec/formalism.md#observation).

    grad:   g_t = ∇f_t(θ_{t-1}), shape (n,)
    params: θ_{t-1}, shape (n,)
    loss:   f_t(θ_{t-1}), a real scalar
    hvp:    v ↦ ∇²f_t(θ_{t-1}) v
    third:  (u, v) ↦ ∇³f_t(θ_{t-1})[u, v] = d/dθ (∇²f_t(θ) u)·v at θ_{t-1}
    """

    grad: object
    params: object = None
    loss: object = None
    hvp: Callable | None = None
    third: Callable | None = None


# --------------------------------------------------------------------------- states

state = functools.partial(dataclass, frozen=True, eq=False)
"""Decorator for state classes: frozen dataclasses, compared field by field with ``state_fields``."""


class State:
    """Base of every reference state. Array fields are stored as read-only copies, so a state is an
    immutable value: F returns a new one and the old one stays valid."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                frozen = np.array(value, copy=True)
                frozen.flags.writeable = False
                object.__setattr__(self, f.name, frozen)

    def replace(self, **changes) -> State:
        return dataclasses.replace(self, **changes)


def state_fields(s) -> dict:
    """The named fields of a state, in declaration order."""
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}


# --------------------------------------------------------------------------- working precision

_WORKING_DTYPE = contextvars.ContextVar("stepspec_working_dtype", default=np.float64)


def working_dtype() -> type:
    """The float type validated inputs are converted to: float64, unless ``working_precision`` says otherwise."""
    return _WORKING_DTYPE.get()


@contextlib.contextmanager
def working_precision(dtype):
    """Within the block, validated inputs become ``dtype`` arrays, and optimizers constructed in it keep
    computing in ``dtype`` (the reference's arithmetic follows its inputs' dtype). The float32
    conformance backend is the reference constructed under ``working_precision(np.float32)``."""
    token = _WORKING_DTYPE.set(np.dtype(dtype).type)
    try:
        yield
    finally:
        _WORKING_DTYPE.reset(token)


# --------------------------------------------------------------------------- input checks


def as_real_array(name: str, value, error: type, shape: tuple | None = None, dtype=None) -> np.ndarray:
    """``value`` as a read-only array of the working dtype (float64 by default), or ``error(name, ...)``:
    real (not bool/complex), finite, and of ``shape`` when given; ``dtype`` overrides the working dtype."""
    try:
        array = np.asarray(value)
    except Exception as exc:  # ragged lists and other non-arrays
        raise error(name, f"is not an array ({exc})") from None
    if array.dtype.kind not in "fiu":
        raise error(name, f"must be a real array, got dtype {array.dtype}")
    if shape is not None and array.shape != tuple(shape):
        raise error(name, f"must have shape {tuple(shape)}, got {array.shape}")
    array = np.array(array, dtype=dtype or working_dtype())
    if not np.all(np.isfinite(array)):
        bad = np.flatnonzero(~np.isfinite(array.ravel()))
        raise error(name, f"must be finite, got {array.ravel()[bad[0]]} at flat index {bad[0]}")
    array.flags.writeable = False
    return array


def as_vector(name: str, value, error: type, n: int | None = None) -> np.ndarray:
    """A real finite vector of shape (n,) (any n when ``n`` is None); see ``as_real_array``."""
    array = as_real_array(name, value, error)
    if array.ndim != 1:
        raise error(name, f"must be a vector of shape (n,), got shape {array.shape}")
    if n is not None and array.shape != (n,):
        raise error(name, f"must have shape ({n},), got {array.shape}")
    return array


# --------------------------------------------------------------------------- optimizers


class Optimizer(abc.ABC):
    """Base of the reference optimizers: validation of the contract around ``_F`` and ``_G``.

    Subclasses set ``algo`` (the spec section id) and ``State``, and implement ``initial_state``
    (S_0 as a dict), ``_F`` and ``_G`` on validated inputs (arrays of the working dtype).
    """

    algo: str
    State: type

    def __init__(self, needs=frozenset({"grad"}), **hyperparameters):
        self._hyperparameters = MappingProxyType(dict(hyperparameters))
        self.__dict__.update(hyperparameters)  # read as self.lr, self.B, ... in the equations
        self.needs = frozenset(needs)
        self.dtype = working_dtype()  # init, F and G compute in the precision the optimizer was built in

    @property
    def hyperparameters(self):
        return self._hyperparameters

    @property
    def spec(self) -> spec.Section:
        return spec.section(self.algo)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hyperparameters.items())
        return f"{self.algo}({args})"

    # -- the contract -----------------------------------------------------------------

    def init(self, theta0, **initial_state) -> State:
        """S_0 for parameters ``theta0``; keyword arguments override any state field."""
        with working_precision(self.dtype):
            theta0 = as_vector("theta0", theta0, StateError)
            fields = self.initial_state(theta0)
            for name, value in initial_state.items():
                if name not in fields:
                    raise StateError(name, f"is not a state field of {self.algo}; fields: {sorted(fields)}")
                fields[name] = self._check_state_field(name, value, fields[name])
            return self.State(**fields)

    def F(self, state: State, obs: Observation) -> State:
        """S_t = F(S_{t-1}, obs_t)."""
        with working_precision(self.dtype):
            return self._F(state, self.check_observation(obs, self.dimension(state)))

    def G(self, state: State, obs: Observation) -> np.ndarray:
        """The update θ_t − θ_{t-1} = G(S_t, obs_t)."""
        with working_precision(self.dtype):
            return self._G(state, self.check_observation(obs, self.dimension(state)))

    # -- hooks --------------------------------------------------------------------------

    @abc.abstractmethod
    def initial_state(self, theta0: np.ndarray) -> dict:
        """S_0 as a dict of fields, before overrides."""

    @abc.abstractmethod
    def _F(self, state: State, obs: Observation) -> State:
        """F on a validated observation."""

    @abc.abstractmethod
    def _G(self, state: State, obs: Observation) -> np.ndarray:
        """G on a validated observation."""

    def dimension(self, s: State) -> int | None:
        """n as recorded in the state, or None for a stateless optimizer (then any n is accepted)."""
        for value in state_fields(s).values():
            if isinstance(value, np.ndarray) and value.ndim >= 1:
                return value.shape[0]
        return None

    # -- validation ---------------------------------------------------------------------

    def check_observation(self, obs, n: int | None) -> Observation:
        """The observation with validated fields (arrays of the working dtype), or ``ObservationError``
        naming the field."""
        if not isinstance(obs, Observation):
            raise ObservationError("obs", f"must be a stepspec.Observation, got {type(obs).__name__}")
        for name in sorted(self.needs):
            if getattr(obs, name) is None:
                raise ObservationError(
                    name, f"{self.algo} needs Observation.{name} (spec/formalism.md#observation); it is None"
                )
        grad = as_vector("grad", obs.grad, ObservationError, n)
        params = None
        if "params" in self.needs:
            params = as_vector("params", obs.params, ObservationError, grad.shape[0])
        loss = None
        if "loss" in self.needs:
            loss = float(as_real_array("loss", obs.loss, ObservationError, shape=(), dtype=np.float64))  # a host scalar
        curvature = {}
        for name, meaning in (("hvp", "v ↦ ∇²f v"), ("third", "(u, v) ↦ ∇³f[u, v]")):
            if name in self.needs:
                function = getattr(obs, name)
                if not callable(function):
                    raise ObservationError(name, f"must be callable {meaning}, got {type(function).__name__}")
                curvature[name] = _checked_product(name, function, grad.shape[0])
        return Observation(grad, params, loss, curvature.get("hvp"), curvature.get("third"))

    def _check_state_field(self, name: str, value, default):
        """An override must look like the default: same array shape and dtype, a non-negative int counter,
        or a finite real scalar (a host float, float64 in every working precision). Other fields (an RLLC
        rule's hidden state) are the rule's business."""
        if isinstance(default, np.ndarray):
            return as_real_array(name, value, StateError, default.shape, default.dtype)
        if isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise StateError(name, f"must be a non-negative integer, got {value!r}")
            return int(value)
        if isinstance(default, float):
            return float(as_real_array(name, value, StateError, shape=(), dtype=np.float64))
        return value


def _checked_product(name: str, function: Callable, n: int) -> Callable:
    """``function`` with its results checked like an observation: finite real vectors of shape (n,)."""

    def checked(*vectors):
        return as_vector(name, function(*vectors), ObservationError, n)

    return checked


# --------------------------------------------------------------------------- running


def observe(problem, theta: np.ndarray, needs) -> Observation:
    """The observation of ``problem`` (f_t) at θ_{t-1}, with the fields the optimizer needs; the
    problem provides them as methods of the same names (``third(theta, u, v)`` for third order)."""
    for field in ("loss", "hvp", "third"):
        if field in needs and not hasattr(problem, field):
            raise ObservationError(
                field, f"the optimizer needs Observation.{field}, but {type(problem).__name__} has no {field} method"
            )
    return Observation(
        grad=problem.grad(theta),
        params=theta if "params" in needs else None,
        loss=problem.loss(theta) if "loss" in needs else None,
        hvp=(lambda v: problem.hvp(theta, v)) if "hvp" in needs else None,
        third=(lambda u, v: problem.third(theta, u, v)) if "third" in needs else None,
    )


def _non_finite_entry(value) -> str | None:
    """'<entry> at flat index <i>' for the first NaN or ±Inf of a real floating value, else None: other
    values (wrong kinds, ragged lists) are left to the contract's own checks."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        return None
    if array.dtype.kind != "f":
        return None
    bad = np.flatnonzero(~np.isfinite(array.ravel()))
    return f"{array.ravel()[bad[0]]} at flat index {bad[0]}" if bad.size else None


def _check_finite(param: str, what: str, value, t: int, previous: np.ndarray):
    """``value`` (``what``, named ``param``) if finite, else ``DivergenceError`` at step t; ``previous`` = θ_{t−1}."""
    entry = _non_finite_entry(value)
    if entry is not None:
        largest = float(np.max(np.abs(previous)))
        raise DivergenceError(param, t, f"{what} is not finite ({entry}); max |θ_{t - 1}| = {largest:.3g}")
    return value


def _finite_observation(obs: Observation, t: int, theta: np.ndarray) -> Observation:
    """The problem's observation at θ_{t−1} = ``theta``, with its gradient, loss and curvature products
    checked by ``_check_finite``."""

    def finite(name: str, value):
        return _check_finite(name, f"the problem's {name} at θ_{t - 1}", value, t, theta)

    def checked(name: str, function: Callable) -> Callable:
        return lambda *vectors: finite(name, function(*vectors))

    curvature = {name: checked(name, getattr(obs, name)) for name in ("hvp", "third") if getattr(obs, name)}
    return dataclasses.replace(obs, grad=finite("grad", obs.grad), loss=finite("loss", obs.loss), **curvature)


def iterate(optimizer, problem, theta0, steps: int, **initial_state) -> Iterator[tuple[int, np.ndarray, object]]:
    """Yield (t, θ_t, S_t) for t = 0 … steps. A problem with a ``batch(t)`` method is stochastic:
    f_t = problem.batch(t); otherwise f_t = problem. A run that leaves the finite numbers stops with
    ``DivergenceError`` naming the step (spec/formalism.md#running)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    theta = as_vector("theta0", theta0, StateError)
    s = optimizer.init(theta, **initial_state)
    yield 0, theta, s
    for t in range(1, steps + 1):
        f_t = problem.batch(t) if hasattr(problem, "batch") else problem
        previous = theta
        # a diverging run overflows on the way: reported below as a divergence at step t, not as a warning
        with np.errstate(over="ignore", invalid="ignore"):
            obs = _finite_observation(observe(f_t, theta, optimizer.needs), t, theta)
            s = optimizer.F(s, obs)
            theta = theta + optimizer.G(s, obs)
        _check_finite("theta", f"θ_{t}", theta, t, previous)
        for name, value in state_fields(s).items():
            if isinstance(value, (float, np.floating, np.ndarray)):
                _check_finite(name, f"the state field {name} of S_{t}", value, t, previous)
        yield t, theta, s


def run(optimizer, problem, theta0, steps: int, **initial_state) -> np.ndarray:
    """θ_0 … θ_steps as an array of shape (steps + 1, n); a diverging run raises ``DivergenceError``."""
    return np.stack([theta for _, theta, _ in iterate(optimizer, problem, theta0, steps, **initial_state)])
