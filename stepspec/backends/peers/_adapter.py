"""The adapter that puts an optimizer stepspec did not write under the suite (spec/classical.md#peers).

A peer (torch.optim.Adam, lion-pytorch's Lion) is a ``torch.optim.Optimizer``: ``step()`` takes S_{t−1}
(its ``state``) and g_t (``p.grad``) and updates the state and the parameters in place. The adapter gives
it the protocol of spec/conformance.md#backends:

- **F** builds the peer over copies of θ_{t−1} (zeros when the update does not read θ: then θ_t − θ_{t−1}
  is the peer's increment itself, with no cancellation), loads a copy of S_{t−1} with ``load_state_dict``,
  calls ``step()`` and keeps the state the step leaves: the state F was given is never touched.
- **G** is θ_t − θ_{t−1} of that step. A peer computes its update only inside ``step()``, from S_{t−1}, so
  S_t keeps the S_{t−1} it came from and G repeats the step from it with its own observation. A state
  built by ``init`` has no S_{t−1}, unless the peer keeps no state at all (SGD): G refuses it.
- **State fields** are views of the peer's per-parameter state (``m`` ← ``exp_avg``); a field the peer does
  not keep is derived by the adapter from its definition (Lion's c_t).
- **Checks.** The adapter checks what the protocol defines and a peer's API has no notion of: an
  Observation, the fields the algorithm needs present, real, shaped like the parameters; ``init``
  overrides naming spec fields, with the right shapes, a counter an integer. Values (finiteness, domains)
  are the peer's behaviour under test and pass through unchecked; a hyperparameter the peer's constructor
  refuses is reported as ``HyperparameterError`` naming the spec's hyperparameter.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ... import spec
from ..._core import Observation
from ...errors import HyperparameterError, ObservationError, StateError

DTYPES = {"float64": torch.float64, "float32": torch.float32}


# --------------------------------------------------------------------------- what a peer is


@dataclass(frozen=True)
class Key:
    """A tensor the peer keeps per parameter under ``name``, shown as the spec's state field ``field``
    (None: kept but not a spec field, as RMSprop's step count); ``counter``: a step count (a scalar per
    parameter, shown as one int)."""

    name: str
    field: str | None
    counter: bool = False


Derivation = Callable[[dict, "PeerState", list], list]
"""(hyperparameters, S_{t−1}, g_t per parameter) ↦ the field of S_t, per parameter."""


@dataclass(frozen=True)
class Peer:
    """One spec algorithm on one peer optimizer class.

    ``make(params, hyperparameters)`` builds the peer's optimizer over ``params`` from the spec's
    hyperparameters; ``keys`` is what it keeps per parameter; ``derived(hyperparameters)`` names the spec
    fields it does not keep in that configuration, each with its derivation from the definition."""

    algo: str
    label: str
    make: Callable[[list, dict], torch.optim.Optimizer]
    keys: tuple[Key, ...] = ()
    derived: Callable[[dict], Mapping[str, Derivation]] = lambda hyperparameters: {}


# --------------------------------------------------------------------------- parameter structures


@dataclass(frozen=True)
class Structure:
    """The shapes of the parameters; ``single`` when they were given as one vector (the spec's θ ∈ ℝⁿ)."""

    shapes: tuple
    single: bool

    @property
    def n(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        sizes = [math.prod(s) for s in self.shapes]
        return [part.reshape(shape).clone() for part, shape in zip(torch.split(flat, sizes), self.shapes)]

    def as_given(self, parts: list):
        return parts[0] if self.single else parts


def flat(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in parts]) if parts else torch.zeros(0, dtype=dtype)


def as_tensors(name: str, value, error: type, dtype: torch.dtype, structure: Structure | None = None):
    """``value`` (a vector, or a list of arrays of any shapes) as tensors of ``dtype`` and their structure,
    or ``error(name, …)`` for what is not a real array shaped like ``structure``. Values are not checked."""
    single = not isinstance(value, (list, tuple))
    tensors = []
    for item in [value] if single else value:
        try:
            t = item if isinstance(item, torch.Tensor) else torch.as_tensor(np.asarray(item))
        except Exception as exc:  # ragged lists and other non-arrays
            raise error(name, f"is not an array ({exc})") from None
        if t.dtype == torch.bool or t.is_complex():
            raise error(name, f"must be a real array, got dtype {str(t.dtype).removeprefix('torch.')}")
        tensors.append(t.to(dtype))
    if single and tensors[0].dim() != 1:
        raise error(name, f"must be a vector of shape (n,), got shape {tuple(tensors[0].shape)}")
    shapes = tuple(t.shape for t in tensors)
    if structure is not None and shapes != structure.shapes:
        expected = [tuple(s) for s in structure.shapes]
        raise error(name, f"must have the parameter shapes {expected}, got {[tuple(s) for s in shapes]}")
    return tensors, Structure(shapes, single)


# --------------------------------------------------------------------------- states


class PeerState:
    """S_t: the peer's state (one dict per parameter, as ``state_dict()["state"]`` holds it), the fields
    the adapter derives, and ``previous``, the peer's S_{t−1} that F stepped from (None when built by
    ``init``). A value: F returns a new one."""

    def __init__(self, optimizer: PeerOptimizer, structure: Structure, peer: list, derived: dict, previous):
        object.__setattr__(self, "_optimizer", optimizer)
        object.__setattr__(self, "structure", structure)
        object.__setattr__(self, "peer", peer)
        object.__setattr__(self, "derived", derived)
        object.__setattr__(self, "previous", previous)

    def per_parameter(self, name: str) -> list[torch.Tensor]:
        """Spec field ``name`` as one tensor per parameter (S_0's zeros where the peer holds nothing yet)."""
        if name in self.derived:
            return self.derived[name]
        key, dtype = self._optimizer.key_of[name].name, self._optimizer.dtype
        return [
            state.get(key, torch.zeros(shape, dtype=dtype)) for state, shape in zip(self.peer, self.structure.shapes)
        ]

    def __getattr__(self, name):
        optimizer = object.__getattribute__(self, "_optimizer")
        if name not in optimizer.fields:
            raise AttributeError(name)
        key = optimizer.key_of.get(name)
        if key is not None and key.counter:  # the peer steps every parameter together: one count
            return next((int(state[key.name]) for state in self.peer if key.name in state), 0)
        return flat(self.per_parameter(name), optimizer.dtype)

    def __setattr__(self, name, value):
        raise AttributeError("a state is a value: F returns a new one")


# --------------------------------------------------------------------------- the optimizer


class PeerOptimizer:
    """A peer's algorithm under the (F, G) contract of spec/formalism.md, on a vector or a list of tensors."""

    def __init__(self, peer: Peer, hyperparameters: dict, dtype: torch.dtype):
        self.peer, self.algo, self.dtype = peer, peer.algo, dtype
        self.hyperparameters = dict(hyperparameters)
        self.fields = tuple(f.name for f in spec.section(peer.algo).state_fields)
        self.key_of = {k.field: k for k in peer.keys if k.field is not None}
        self.derivations = dict(peer.derived(self.hyperparameters))
        decays = self.hyperparameters.get("weight_decay", 0) != 0
        self.needs = frozenset({"grad", "params"} if decays else {"grad"})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"{self.peer.label}: {self.algo}({args})"

    # -- the contract -------------------------------------------------------------------

    def init(self, theta0, **overrides) -> PeerState:
        """S_0: the peer's fresh state (nothing yet), or the given spec fields (flat, as the spec shows them)."""
        params, structure = as_tensors("theta0", theta0, StateError, self.dtype)
        for name in overrides:
            if name not in self.fields:
                raise StateError(name, f"is not a state field of {self.algo}; fields: {sorted(self.fields)}")
        derived = {name: [torch.zeros_like(p) for p in params] for name in self.derivations}
        peer = [{} for _ in params]
        if any(name not in self.derivations for name in overrides):  # the peer's own S_0, then the overrides
            peer = [{k.name: _initial(k, p) for k in self.peer.keys} for p in params]
        for name, value in overrides.items():
            if name in self.derivations:
                derived[name] = _field(name, value, structure, self.dtype)
            elif self.key_of[name].counter:
                for state in peer:
                    state[self.key_of[name].name] = torch.tensor(float(_count(name, value)))
            else:
                for state, part in zip(peer, _field(name, value, structure, self.dtype)):
                    state[self.key_of[name].name] = part
        stateless = not self.peer.keys  # then every state is its own predecessor: the empty one
        return PeerState(self, structure, peer, derived, [{} for _ in params] if stateless else None)

    def F(self, state: PeerState, obs) -> PeerState:
        """S_t = F(S_{t−1}, obs_t): the peer's step from a copy of S_{t−1}."""
        grads, params = self._observation(obs, state.structure)
        peer, _ = self._step(state.peer, grads, params)
        derived = {name: derive(self.hyperparameters, state, grads) for name, derive in self.derivations.items()}
        return PeerState(self, state.structure, peer, derived, state.peer)

    def G(self, state: PeerState, obs):
        """θ_t − θ_{t−1}: the peer's step repeated from the S_{t−1} that S_t came from."""
        grads, params = self._observation(obs, state.structure)
        if state.previous is None:
            raise StateError(
                "state",
                f"{self.peer.label} computes θ_t − θ_(t−1) only inside step(), from S_(t−1): G needs a state "
                "that F returned, not one built by init",
            )
        _, delta = self._step(state.previous, grads, params)
        return state.structure.as_given(delta)

    # -- the peer's step ----------------------------------------------------------------

    def _step(self, previous: list, grads: list, params: list | None):
        """One ``step()`` of the peer from a copy of ``previous``: (its new state, θ_t − θ_{t−1})."""
        before = params if params is not None else [torch.zeros_like(g) for g in grads]
        live = [p.clone() for p in before]
        for p, g in zip(live, grads):
            p.grad = g.clone()
        optimizer = self.peer.make(live, self.hyperparameters)
        if any(previous):
            saved = optimizer.state_dict()
            saved["state"] = {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(previous) if s}
            optimizer.load_state_dict(saved)
        optimizer.step()
        state = [dict(optimizer.state[p]) for p in live]
        for p in live:
            p.grad = None
        delta = live if params is None else [a - b for a, b in zip(live, before)]
        return state, delta

    def _observation(self, obs, structure: Structure):
        if not isinstance(obs, Observation):
            raise ObservationError("obs", f"must be a stepspec.Observation, got {type(obs).__name__}")
        for name in sorted(self.needs):
            if getattr(obs, name) is None:
                raise ObservationError(name, f"{self.algo} needs Observation.{name}; it is None")
        grads, _ = as_tensors("grad", obs.grad, ObservationError, self.dtype, structure)
        params = None
        if "params" in self.needs:
            params, _ = as_tensors("params", obs.params, ObservationError, self.dtype, structure)
        return grads, params


def _initial(key: Key, param: torch.Tensor) -> torch.Tensor:
    return torch.tensor(0.0) if key.counter else torch.zeros_like(param)


def _count(name: str, value) -> int:
    """A step count as the protocol types it (an integer); its value is the peer's to judge."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise StateError(name, f"must be an integer, got {value!r}")
    return int(value)


def _field(name: str, value, structure: Structure, dtype: torch.dtype) -> list[torch.Tensor]:
    (vector,), _ = as_tensors(name, [value], StateError, dtype)
    if tuple(vector.shape) != (structure.n,):
        raise StateError(name, f"must have shape ({structure.n},), got {tuple(vector.shape)}")
    return structure.split(vector)


# --------------------------------------------------------------------------- construction


def build(peer: Peer, hyperparameters: dict, dtype: torch.dtype) -> PeerOptimizer:
    """The peer's optimizer for the spec's hyperparameters, or ``HyperparameterError`` naming the
    hyperparameter the peer's constructor refuses (spec/classical.md#peers)."""
    probe = [torch.zeros(1, dtype=dtype)]
    try:
        peer.make(probe, hyperparameters)
    except Exception as refusal:
        raise _attributed(peer, hyperparameters, probe) or refusal from None
    return PeerOptimizer(peer, hyperparameters, dtype)


def _attributed(peer: Peer, hyperparameters: dict, probe: list) -> HyperparameterError | None:
    """The first hyperparameter (in the spec's order) that the peer refuses when it alone departs from
    the spec's defaults (required ones keep their given values): the peer's verdict, attributed."""
    accepted = {
        h.name: h.default if h.default not in (spec.REQUIRED, spec.COMPUTED) else hyperparameters[h.name]
        for h in spec.section(peer.algo).hyperparameters
    }
    for name, value in hyperparameters.items():
        try:
            peer.make(probe, {**accepted, name: value})
        except Exception as exc:
            return HyperparameterError(name, f"{peer.label} refuses {name}={value!r} ({type(exc).__name__}: {exc})")
    return None


def bind(constructor: Callable, **fixed) -> Callable:
    """``constructor`` with keyword-only arguments fixed: the spec's signature, as the API properties read it."""
    signature = inspect.signature(constructor)

    @functools.wraps(constructor)
    def construct(*args, **hyperparameters):
        return constructor(*args, **fixed, **hyperparameters)

    construct.__signature__ = signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name not in fixed]
    )
    return construct


# --------------------------------------------------------------------------- expected failures every peer shares

NO_G_OF_S_T = (
    "the peer's step() computes θ_t − θ_(t−1) from S_(t−1) and g_t, in the call that makes S_t: there is no "
    "G(S_t). The stepwise comparison hands G an S_t built by init, with no S_(t−1) for the adapter to repeat "
    "the step from; equivalence_free_running and structured_parameters compare θ and every state field at "
    "every step (spec/classical.md#peers)"
)
UNCHECKED_VALUES = (
    "the peer checks no values: a NaN or infinite gradient, parameter or loaded state enters the step (a check "
    "costs a host synchronisation per step; torch.optim leaves it to the caller, e.g. GradScaler's found_inf), "
    "and the adapter checks only what the peer's API has no notion of (spec/classical.md#peers)"
)
NON_FINITE = ("grad NaN", "grad +Inf", "grad -Inf", "theta0 NaN", "theta0 Inf")
NON_FINITE_PARAMS = ("params NaN", "params +Inf", "params -Inf")
"""Error inputs of spec/errors.md that are values: the peer's to judge, never the adapter's (the params
ones where the algorithm's first catalogue sample decays θ)."""


def expected_failures(stateful: tuple[str, ...], cases: Mapping[str, Mapping[str, tuple]]) -> dict[tuple, str]:
    """The table of ``PeerBackend.expected_failures``: the stepwise comparison for every algorithm whose
    peer keeps a state, and ``cases``: algorithm → reason → the error inputs (their ``desc``) it covers."""
    return {
        **{(algo, "equivalence_stepwise"): NO_G_OF_S_T for algo in stateful},
        **{
            (algo, "errors", case): reason
            for algo, by in cases.items()
            for reason, listed in by.items()
            for case in listed
        },
    }


# --------------------------------------------------------------------------- backends


@dataclass
class PeerBackend:
    """A peer as a backend of spec/conformance.md#backends. ``expected_failures`` maps (algorithm,
    property) or (algorithm, property, case) to the reason a row is known to fail (spec/conformance.md#backends)."""

    name: str
    version: str
    dtype: str
    algorithms: Mapping[str, Callable]
    expected_failures: Mapping[tuple, str] = field(default_factory=dict)
    structured = True  # a peer steps over a list of tensors of any shapes, as torch.optim does

    def asarray(self, x) -> torch.Tensor:
        """A host array as a tensor: real floating input in the working precision, other kinds kept, so
        that bad input reaches the optimizer."""
        array = np.array(x)
        tensor = torch.from_numpy(array)
        return tensor.to(DTYPES[self.dtype]) if array.dtype.kind == "f" else tensor

    @staticmethod
    def to_numpy(x) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
