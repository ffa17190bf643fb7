"""What the structured backends (torch, jax, array API) share: the host side of their cores.

Each backend's core keeps what touches its own arrays (conversion, finite checks, the layouts' array work);
the checks of host values, the state shown flat through layouts, the validated step input and the
optimizers' contract around them are written here once, in plain Python and NumPy.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .._core import Observation
from ..errors import ObservationError, StateError
from ..spec import check_hyperparameters

# --------------------------------------------------------------------------- host values


def host_scalar(name: str, value, error: type) -> float:
    """A real finite scalar on the host (the loss, a scalar state field) as a Python float: host scalars
    stay float64 in every precision. A backend converts its own 0-d arrays to host values first."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise error(name, f"must be a real array, got dtype {array.dtype}")
    if array.shape != ():
        raise error(name, f"must have shape (), got {array.shape}")
    x = float(array)
    if not math.isfinite(x):
        raise error(name, f"must be finite, got {x}")
    return x


def host_counter(name: str, value) -> int:
    """A non-negative integer (a step counter, a decision) as a Python int, or ``StateError``. A 0-d integer
    NumPy array counts as its value; a backend converts its own 0-d arrays to host values first."""
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iu":
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise StateError(name, f"must be a non-negative integer, got {value!r}")
    return int(value)


def raise_first_non_finite(name: str, host_leaves, error: type) -> None:
    """``error(name, …)`` at the first non-finite entry of ``host_leaves`` (arrays on the host, in structure
    order, flat index counted across them); a generator converts each leaf only when the scan reaches it."""
    offset = 0
    for leaf in host_leaves:
        flat = np.asarray(leaf).reshape(-1)
        bad = np.flatnonzero(~np.isfinite(flat))
        if bad.size:
            raise error(name, f"must be finite, got {flat[bad[0]]} at flat index {offset + int(bad[0])}")
        offset += flat.size


def hyperparameters(algo: str, **values) -> dict:
    """The spec table's validation (domains, defaults, types), as the reference applies it."""
    return check_hyperparameters(algo, **values)


# --------------------------------------------------------------------------- structures and state


class Shapes:
    """The sizes of a parameter structure's leaves (``shapes``) and n, the length of their concatenation."""

    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def n(self) -> int:
        return sum(self.sizes)


class Layout(abc.ABC):
    """How one spec state field is stored in a structured state, and shown flat."""

    @abc.abstractmethod
    def flat(self, stored, structure):
        """The spec's view of the stored value."""

    @abc.abstractmethod
    def store(self, name: str, value, structure, default):
        """An ``init`` override (flat, as the spec shows the field) as stored, or ``StateError``; ``default``
        is the field's S_0 as stored (its shape is the override's)."""

    def clone(self, stored):
        """A copy of the stored value that a step may overwrite in place (host values are immutable)."""
        return stored


class HostLayout(Layout):
    """A field kept on the host as a Python number, shown as it is stored. ``to_host(name, value, structure)``
    turns a backend's own 0-d array into a host value, or raises ``StateError`` naming ``name``."""

    def __init__(self, to_host: Callable):
        self.to_host = to_host

    def flat(self, stored, structure):
        return stored


class Counter(HostLayout):
    """A non-negative int on the host (a step counter, a decision)."""

    def store(self, name, value, structure, default):
        return host_counter(name, self.to_host(name, value, structure))


class HostScalar(HostLayout):
    """A real scalar on the host, float64 in every precision (ELRA's α, a loss statistic)."""

    def store(self, name, value, structure, default):
        return host_scalar(name, self.to_host(name, value, structure), StateError)


class FlatFields:
    """Each spec field shown flat as an attribute, read through its layout; a value, never assigned to.
    Subclasses keep ``_layouts`` (spec field → Layout) and define ``_flat(name, layout)``, the field read
    from where they store it."""

    def __getattr__(self, name):
        layouts = object.__getattribute__(self, "_layouts")
        if name not in layouts:
            raise AttributeError(name)
        return self._flat(name, layouts[name])

    def __setattr__(self, name, value):
        raise AttributeError("a State is a value: F returns a new one")

    def fields(self) -> dict:
        """The spec's fields, flat."""
        return {name: getattr(self, name) for name in self._layouts}


class State(FlatFields):
    """A structured state: the stored form of each spec field (``stored``, field → value), shown flat. F
    returns a new State that shares the values it did not change, so a stored value is written in place only
    in a copy the step owns (torch's ``State.clone``)."""

    def __init__(self, layouts: Mapping[str, Layout], structure, stored: dict):
        object.__setattr__(self, "_layouts", layouts)
        object.__setattr__(self, "structure", structure)
        object.__setattr__(self, "stored", stored)

    def _flat(self, name, layout):
        return layout.flat(self.stored[name], self.structure)

    def replace(self, **stored) -> State:
        """A new state with some stored fields replaced, the others shared."""
        return type(self)(self._layouts, self.structure, {**self.stored, **stored})


# --------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class StepInput:
    """A validated observation on the parameter structure: lists of native arrays, a host loss, and the
    curvature products as functions of lists."""

    grad: list
    params: list | None = None
    loss: float | None = None
    hvp: Callable | None = None
    third: Callable | None = None


def structured_products(obs: Observation, needs, structure, as_list: Callable) -> dict:
    """The curvature products among ``needs``, each the observation's function of the caller's form (one
    array or a list) as a function of lists; ``as_list(name, value)`` checks its results like observations
    and returns them as a list of native arrays."""
    products = {}
    for name in ("hvp", "third"):
        if name in needs:
            function = getattr(obs, name)
            if not callable(function):
                raise ObservationError(name, f"must be callable, got {type(function).__name__}")

            def product(*vectors, _name=name, _function=function):
                return as_list(_name, _function(*[structure.as_given(list(v)) for v in vectors]))

            products[name] = product
    return products


# --------------------------------------------------------------------------- optimizers


class Optimizer(abc.ABC):
    """What every structured optimizer shares: its hyperparameters as attributes, its repr, the observation
    fields it needs, and ``init``'s overrides of S_0. Subclasses set ``algo``, ``layouts`` (spec field →
    Layout) and, per backend, ``backend`` (the repr's prefix)."""

    algo: str
    backend: str
    layouts: Mapping[str, Layout]

    def __init__(self, needs, hyperparameters: dict):
        self.hyperparameters = dict(hyperparameters)
        self.__dict__.update(hyperparameters)
        self.needs = frozenset(needs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"{self.backend}.{self.algo}({args})"

    def overridden(self, stored: dict, overrides: Mapping, structure) -> dict:
        """``stored`` (S_0) with ``init``'s keyword overrides, each given flat and stored by its layout."""
        for name, value in overrides.items():
            if name not in self.layouts:
                raise StateError(name, f"is not a state field of {self.algo}; fields: {sorted(self.layouts)}")
            stored[name] = self.layouts[name].store(name, value, structure, stored[name])
        return stored

    def check_needs(self, obs) -> None:
        """``ObservationError`` unless ``obs`` is an Observation carrying every field this algorithm needs."""
        if not isinstance(obs, Observation):
            raise ObservationError("obs", f"must be a stepspec.Observation, got {type(obs).__name__}")
        for name in sorted(self.needs):
            if getattr(obs, name) is None:
                raise ObservationError(
                    name, f"{self.algo} needs Observation.{name} (spec/formalism.md#observation); it is None"
                )
