"""optax's own optimizers under the suite (spec/classical.md#peers): ``optax.sgd`` (plain → sgd, ``momentum=β``
→ momentum, ``nesterov=True`` → nag), ``adam``, ``adamw``, ``rmsprop`` and ``lion``, as the backends ``optax``
(float64) and ``optax-float32``.

optax is functional: a transformation's ``update(g_t, S_{t−1}, θ_{t−1})`` returns the update and S_t, so F
is that call and the peer's state is a value. Like torch.optim, optax computes the update only from S_{t−1}
and g_t: S_t keeps the S_{t−1} it came from and G repeats the update from it (the adapter's approach,
``_adapter``). optax's update is the increment itself, θ_t = ``optax.apply_updates(θ_{t−1}, update)``
= θ_{t−1} + update, so G is the update, with no cancellation.

Native arrays are NumPy arrays: the float64 backend computes under ``jax.enable_x64(True)``, a context
manager local to the calling thread, and hands back NumPy arrays and states, so enabling x64 never leaks
into the process (the float32 backend computes under ``jax.enable_x64(False)``). This module imports
neither torch nor, until a backend is built, jax.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ... import spec
from ..._core import Observation
from ...errors import HyperparameterError, ObservationError, StateError

NUMPY_DTYPES = {"float64": np.float64, "float32": np.float32}

# --------------------------------------------------------------------------- the mapping onto optax


def _with_coupled_decay(optax, hp: dict, transformation):
    """(C6), (C12): g' = g + λθ before the moments, optax's ``add_decayed_weights`` chained in front."""
    if hp["weight_decay"] == 0:
        return transformation
    return optax.chain(optax.add_decayed_weights(hp["weight_decay"]), transformation)


def _transformation(optax, algo: str, hp: dict):
    """The optax transformation of ``algo`` for the spec's hyperparameters (spec/classical.md#peers)."""
    if algo == "sgd":
        return optax.sgd(hp["lr"])
    if algo in ("momentum", "nag"):
        return optax.sgd(hp["lr"], momentum=hp["beta"], nesterov=algo == "nag")
    if algo == "rmsprop":
        rms = optax.rmsprop(hp["lr"], decay=hp["alpha"], eps=hp["eps"], eps_in_sqrt=False)
        return _with_coupled_decay(optax, hp, rms)
    b1, b2 = hp["betas"]
    if algo == "adam":
        return _with_coupled_decay(optax, hp, optax.adam(hp["lr"], b1=b1, b2=b2, eps=hp["eps"]))
    if algo == "adamw":
        return optax.adamw(hp["lr"], b1=b1, b2=b2, eps=hp["eps"], weight_decay=hp["weight_decay"])
    return optax.lion(hp["lr"], b1=b1, b2=b2, weight_decay=hp["weight_decay"])


LABELS = {
    "sgd": "optax.sgd(lr)",
    "momentum": "optax.sgd(lr, momentum=beta)",
    "nag": "optax.sgd(lr, momentum=beta, nesterov=True)",
    "adam": "optax.adam (chain(add_decayed_weights, adam) when weight_decay ≠ 0)",
    "adamw": "optax.adamw",
    "rmsprop": "optax.rmsprop(eps_in_sqrt=False) (chain(add_decayed_weights, rmsprop) when weight_decay ≠ 0)",
    "lion": "optax.lion",
}

FIELDS = {"step": ("count",), "m": ("trace", "mu"), "v": ("nu",)}
"""Spec state field → the attributes of optax's state NamedTuples that hold it (``trace``: sgd's momentum,
``mu``: Adam's and Lion's first moment; ``count`` is optax's int32 step count)."""


def _holder(state, name: str):
    """The NamedTuple inside optax's (possibly chained) state that has attribute ``name``, or None."""
    if hasattr(state, "_fields"):
        if name in state._fields:
            return state
        state = tuple(state)
    if isinstance(state, tuple):
        for part in state:
            found = _holder(part, name)
            if found is not None:
                return found
    return None


def _replaced(state, name: str, value):
    """optax's state with attribute ``name`` of the NamedTuple holding it replaced by ``value``."""
    if hasattr(state, "_fields"):
        if name in state._fields:
            return state._replace(**{name: value})
        return type(state)(*(_replaced(part, name, value) for part in state))
    if isinstance(state, tuple):
        return tuple(_replaced(part, name, value) for part in state)
    return state


def _attribute(state, spec_field: str) -> str:
    """The attribute of optax's ``state`` that holds ``spec_field``."""
    return next(name for name in FIELDS[spec_field] if _holder(state, name) is not None)


# --------------------------------------------------------------------------- parameter structures


@dataclass(frozen=True)
class Structure:
    """The shapes of the parameters; ``single`` when they were given as one vector (the spec's θ ∈ ℝⁿ)."""

    shapes: tuple
    single: bool

    @property
    def n(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        bounds = np.cumsum([0, *(math.prod(s) for s in self.shapes)])
        return [flat[a:b].reshape(s).copy() for a, b, s in zip(bounds[:-1], bounds[1:], self.shapes)]

    def as_given(self, parts: list):
        return parts[0] if self.single else parts


def _flat(parts: list, dtype) -> np.ndarray:
    return np.concatenate([np.asarray(p).reshape(-1) for p in parts]) if parts else np.zeros(0, dtype)


def _arrays(name: str, value, error: type, dtype, structure: Structure | None = None):
    """``value`` (a vector, or a list of arrays of any shapes) as NumPy arrays of ``dtype`` and their structure,
    or ``error(name, …)`` for what is not a real array shaped like ``structure``. Values are not checked."""
    single = not isinstance(value, (list, tuple))
    arrays = []
    for item in [value] if single else value:
        try:
            array = np.asarray(item)
        except Exception as exc:  # ragged lists and other non-arrays
            raise error(name, f"is not an array ({exc})") from None
        if array.dtype.kind not in "fiu":
            raise error(name, f"must be a real array, got dtype {array.dtype}")
        arrays.append(array.astype(dtype))
    if single and arrays[0].ndim != 1:
        raise error(name, f"must be a vector of shape (n,), got shape {arrays[0].shape}")
    shapes = tuple(a.shape for a in arrays)
    if structure is not None and shapes != structure.shapes:
        raise error(name, f"must have the parameter shapes {list(structure.shapes)}, got {list(shapes)}")
    return arrays, Structure(shapes, single)


# --------------------------------------------------------------------------- states


class OptaxState:
    """S_t: optax's state (NumPy leaves), Lion's c_t (derived by the adapter: optax applies its sign and keeps
    only m), and ``previous``, the optax state F stepped from (None when built by ``init``). A value: F returns
    a new one."""

    def __init__(self, optimizer: OptaxOptimizer, structure: Structure, peer, derived: dict, previous):
        object.__setattr__(self, "_optimizer", optimizer)
        object.__setattr__(self, "structure", structure)
        object.__setattr__(self, "peer", peer)
        object.__setattr__(self, "derived", derived)
        object.__setattr__(self, "previous", previous)

    def __getattr__(self, name):
        optimizer = object.__getattribute__(self, "_optimizer")
        if name not in optimizer.fields:
            raise AttributeError(name)
        if name in self.derived:
            return _flat(self.derived[name], optimizer.dtype)
        held = getattr(_holder(self.peer, _attribute(self.peer, name)), _attribute(self.peer, name))
        return int(held) if name == "step" else _flat(held, optimizer.dtype)

    def __setattr__(self, name, value):
        raise AttributeError("a state is a value: F returns a new one")


# --------------------------------------------------------------------------- the optimizer


class OptaxOptimizer:
    """An optax transformation under the (F, G) contract of spec/formalism.md, on a vector or a list of arrays."""

    def __init__(self, algo: str, hyperparameters: dict, dtype: str):
        import jax
        import optax

        self.algo, self.dtype, self._jax, self._optax = algo, NUMPY_DTYPES[dtype], jax, optax
        self.hyperparameters = dict(hyperparameters)
        self.transformation = _transformation(optax, algo, self.hyperparameters)
        self.fields = tuple(f.name for f in spec.section(algo).state_fields)
        self._x64 = dtype == "float64"
        decays = self.hyperparameters.get("weight_decay", 0) != 0
        self.needs = frozenset({"grad", "params"} if decays else {"grad"})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"{LABELS[self.algo]}: {self.algo}({args})"

    # -- optax's calls, in the backend's precision, NumPy in and out ---------------------

    def _host(self, tree):
        return self._jax.tree.map(np.asarray, tree)

    def _init(self, params: list):
        with self._jax.enable_x64(self._x64):
            return self._host(self.transformation.init([self._jax.numpy.asarray(p) for p in params]))

    def _update(self, previous, grads: list, params: list):
        """optax's ``update`` from ``previous``: (its update, S_t), NumPy leaves."""
        jnp = self._jax.numpy
        with self._jax.enable_x64(self._x64):
            as_jax = self._jax.tree.map(jnp.asarray, previous)
            updates, state = self.transformation.update(
                [jnp.asarray(g) for g in grads], as_jax, [jnp.asarray(p) for p in params]
            )
            return [np.asarray(u) for u in updates], self._host(state)

    # -- the contract -------------------------------------------------------------------

    def init(self, theta0, **overrides) -> OptaxState:
        """S_0: optax's ``init``, or the given spec fields (flat, as the spec shows them) in its place."""
        params, structure = _arrays("theta0", theta0, StateError, self.dtype)
        for name in overrides:
            if name not in self.fields:
                raise StateError(name, f"is not a state field of {self.algo}; fields: {sorted(self.fields)}")
        peer = self._init(params)
        derived = {"c": [np.zeros_like(p) for p in params]} if self.algo == "lion" else {}
        for name, value in overrides.items():
            if name in derived:
                derived[name] = _field(name, value, structure, self.dtype)
            elif name == "step":
                peer = _replaced(peer, _attribute(peer, name), np.asarray(_count(name, value), np.int32))
            else:
                peer = _replaced(peer, _attribute(peer, name), _field(name, value, structure, self.dtype))
        stateless = not self.fields  # then every state is its own predecessor: the empty one
        return OptaxState(self, structure, peer, derived, peer if stateless else None)

    def F(self, state: OptaxState, obs) -> OptaxState:
        """S_t = F(S_{t−1}, obs_t): optax's update from S_{t−1}."""
        grads, params = self._observation(obs, state.structure)
        _, peer = self._update(state.peer, grads, params)
        derived = {}
        if self.algo == "lion":  # (C15) from optax's m_{t−1}
            beta1 = self.hyperparameters["betas"][0]
            m = _holder(state.peer, "mu").mu
            derived["c"] = [beta1 * a + (1 - beta1) * g for a, g in zip(m, grads)]
        return OptaxState(self, state.structure, peer, derived, state.peer)

    def G(self, state: OptaxState, obs):
        """θ_t − θ_{t−1}: optax's update repeated from the S_{t−1} that S_t came from."""
        grads, params = self._observation(obs, state.structure)
        if state.previous is None:
            raise StateError(
                "state",
                "optax computes θ_t − θ_(t−1) only in update(), from S_(t−1): G needs a state that F returned, "
                "not one built by init",
            )
        updates, _ = self._update(state.previous, grads, params)
        return state.structure.as_given(updates)

    def _observation(self, obs, structure: Structure):
        if not isinstance(obs, Observation):
            raise ObservationError("obs", f"must be a stepspec.Observation, got {type(obs).__name__}")
        for name in sorted(self.needs):
            if getattr(obs, name) is None:
                raise ObservationError(name, f"{self.algo} needs Observation.{name}; it is None")
        grads, _ = _arrays("grad", obs.grad, ObservationError, self.dtype, structure)
        if "params" not in self.needs:  # the update does not read θ: zeros for optax's params argument
            return grads, [np.zeros_like(g) for g in grads]
        params, _ = _arrays("params", obs.params, ObservationError, self.dtype, structure)
        return grads, params


def _count(name: str, value) -> int:
    """A step count as the protocol types it (an integer); its value is optax's to judge."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise StateError(name, f"must be an integer, got {value!r}")
    return int(value)


def _field(name: str, value, structure: Structure, dtype) -> list[np.ndarray]:
    (vector,), _ = _arrays(name, [value], StateError, dtype)
    if vector.shape != (structure.n,):
        raise StateError(name, f"must have shape ({structure.n},), got {vector.shape}")
    return structure.split(vector)


# --------------------------------------------------------------------------- construction


def _refusal(algo: str, hyperparameters: dict, dtype: str) -> Exception | None:
    """What optax raises building the transformation and running ``init`` and one ``update`` on a zero
    parameter (optax builds closures: a hyperparameter it cannot use fails in its first update), or None."""
    try:
        optimizer = OptaxOptimizer(algo, hyperparameters, dtype)
        probe = [np.zeros(1, optimizer.dtype)]
        optimizer._update(optimizer._init(probe), probe, probe)
    except Exception as refusal:
        return refusal
    return None


def build(algo: str, hyperparameters: dict, dtype: str) -> OptaxOptimizer:
    """optax's transformation for the spec's hyperparameters, or ``HyperparameterError`` naming the first
    hyperparameter (in the spec's order) that optax refuses when it alone departs from the spec's defaults."""
    refusal = _refusal(algo, hyperparameters, dtype)
    if refusal is not None:
        accepted = {
            h.name: h.default if h.default not in (spec.REQUIRED, spec.COMPUTED) else hyperparameters[h.name]
            for h in spec.section(algo).hyperparameters
        }
        for name, value in hyperparameters.items():
            alone = _refusal(algo, {**accepted, name: value}, dtype)
            if alone is not None:
                raise HyperparameterError(
                    name, f"optax refuses {name}={value!r} ({type(alone).__name__}: {alone})"
                ) from None
        raise refusal
    return OptaxOptimizer(algo, hyperparameters, dtype)


def _constructors(dtype: str) -> dict[str, Callable]:
    """The spec's constructors (names, defaults) for optax in ``dtype``."""

    def sgd(lr):
        return build("sgd", {"lr": lr}, dtype)

    def momentum(lr, beta=0.9):
        return build("momentum", {"lr": lr, "beta": beta}, dtype)

    def nag(lr, beta=0.9):
        return build("nag", {"lr": lr, "beta": beta}, dtype)

    def adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        return build("adam", {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}, dtype)

    def adamw(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        return build("adamw", {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}, dtype)

    def rmsprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0):
        return build("rmsprop", {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay}, dtype)

    def lion(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        return build("lion", {"lr": lr, "betas": betas, "weight_decay": weight_decay}, dtype)

    return {f.__name__: f for f in (sgd, momentum, nag, adam, adamw, rmsprop, lion)}


# --------------------------------------------------------------------------- the backend


@dataclass
class OptaxBackend:
    """optax as a backend of spec/conformance.md#backends, on NumPy arrays."""

    name: str
    version: str
    dtype: str
    algorithms: Mapping[str, Callable]
    expected_failures: Mapping[tuple, str] = field(default_factory=dict)
    structured = True  # optax steps over any pytree: a list of arrays of any shapes

    def asarray(self, x) -> np.ndarray:
        """A host array in the working precision when real floating, other kinds kept (bad input reaches optax)."""
        array = np.array(x)
        return array.astype(NUMPY_DTYPES[self.dtype]) if array.dtype.kind == "f" else array

    @staticmethod
    def to_numpy(x) -> np.ndarray:
        return np.asarray(x)


def backend(name: str, peer: str, implementation: str | None, dtype: str) -> OptaxBackend:
    """The backend ``optax[-float32]``; optax not installed is a ModuleNotFoundError that says so."""
    try:
        importlib.import_module("optax")
    except ModuleNotFoundError:
        raise ModuleNotFoundError("optax is not installed (an optional peer: pip install optax)") from None
    version = f"optax {importlib.metadata.version('optax')}, jax {importlib.metadata.version('jax')}"
    return OptaxBackend(name, version, dtype, _constructors(dtype), EXPECTED_FAILURES)


# --------------------------------------------------------------------------- where optax departs from the spec

NO_G_OF_S_T = (
    "optax's update() computes θ_t − θ_(t−1) from S_(t−1) and g_t, in the call that makes S_t: there is no "
    "G(S_t). The stepwise comparison hands G an S_t built by init, with no S_(t−1) to repeat the update from; "
    "equivalence_free_running and structured_parameters compare θ and every state field at every step "
    "(spec/classical.md#peers)"
)
UNCHECKED_VALUES = (
    "optax checks no values: a NaN or infinite gradient, parameter or state entry, or a negative step count, "
    "enters the update (under jit a check could not raise; optax leaves it to the caller, e.g. "
    "optax.apply_if_finite), and the adapter checks only what optax's API has no notion of "
    "(spec/classical.md#peers)"
)
UNCHECKED_HYPERPARAMETERS = (
    "optax checks no hyperparameter value: a hyperparameter may be a jax array, a schedule or a traced value "
    "(optax.inject_hyperparams), so lr, β, α, ε and λ outside the spec's domains are used as given "
    "(spec/classical.md#peers)"
)


def _outside(name: str, values: tuple[str, ...], domain: str) -> tuple[str, ...]:
    """The error inputs of spec/errors.md for ``name`` at each of ``values``, outside ``domain``."""
    return tuple(f"{name}={value} outside {domain}" for value in values)


_LR = _outside("lr", ("nan", "0.0", "-1.0", "inf"), "(0, ∞)")
_EPS = _outside("eps", ("nan", "0.0", "-1.0", "inf"), "(0, ∞)")
_DECAY = _outside("weight_decay", ("nan", "-1e-12", "-1.0", "inf"), "[0, ∞)")
_UNIT = ("nan", "-1e-12", "-1.0", "1.0")
_BETAS = tuple(f"betas=({value}, 0.0), entry 0 outside [0, 1)" for value in _UNIT) + tuple(
    f"betas=(0.0, {value}), entry 1 outside [0, 1)" for value in _UNIT
)
_VALUES = ("grad NaN", "grad +Inf", "grad -Inf", "theta0 NaN", "theta0 Inf")
_PARAMS = ("params NaN", "params +Inf", "params -Inf")

_CASES: dict[str, dict[str, tuple[str, ...]]] = {
    "sgd": {UNCHECKED_VALUES: _VALUES, UNCHECKED_HYPERPARAMETERS: _LR},
    **{
        algo: {
            UNCHECKED_VALUES: (*_VALUES, "state m NaN"),
            UNCHECKED_HYPERPARAMETERS: (*_LR, *_outside("beta", _UNIT, "[0, 1)")),
        }
        for algo in ("momentum", "nag")
    },
    **{
        algo: {
            UNCHECKED_VALUES: (*_VALUES, *_PARAMS, "state step negative", "state m NaN", "state v NaN"),
            UNCHECKED_HYPERPARAMETERS: (*_LR, *_BETAS, *_EPS, *_DECAY),
        }
        for algo in ("adam", "adamw")
    },
    "rmsprop": {
        UNCHECKED_VALUES: (*_VALUES, *_PARAMS, "state v NaN"),
        UNCHECKED_HYPERPARAMETERS: (*_LR, *_outside("alpha", _UNIT, "[0, 1)"), *_EPS, *_DECAY),
    },
    "lion": {
        UNCHECKED_VALUES: (*_VALUES, *_PARAMS, "state m NaN", "state c NaN"),
        UNCHECKED_HYPERPARAMETERS: (*_LR, *_BETAS, *_DECAY),
    },
}

EXPECTED_FAILURES: dict[tuple, str] = {
    **{(algo, "equivalence_stepwise"): NO_G_OF_S_T for algo in ("momentum", "nag", "adam", "adamw", "rmsprop", "lion")},
    **{(algo, "errors", case): reason for algo, by in _CASES.items() for reason, cases in by.items() for case in cases},
}
"""(algorithm, property[, case]) → why optax fails it, the same in both precisions (spec/classical.md#peers).
The plugin turns each into a strict expected failure."""
