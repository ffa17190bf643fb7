"""The jax backend's core: parameter pytrees, state pytrees, host-side input checks, the one reduction,
the precision scope and the compiled step.

A jax optimizer runs over any pytree of parameters (``jax.tree_util``): a single 1-D array (the spec's
θ ∈ ℝⁿ, as the conformance suite passes it), a list of arrays of any shapes, a dict of a model's
weights. The spec's state fields keep their meaning over the concatenation of the leaves in
``tree_leaves`` order; a field of shape (n,) is stored as a pytree of the parameters' structure. Each
algorithm's state is a NamedTuple of such pytrees and int32 counters, what its compiled F and G take and
return; ``State`` carries it with the parameters' structure and shows each field flat, as
spec/formalism.md defines it.

F and G are ``jax.jit``-compiled pure functions of (hyperparameters, state, observation). The
hyperparameters are traced scalars in the working precision, not static: one compilation per algorithm,
parameter structure and dtype serves every optimizer built with other values (the conformance suite
draws hundreds), and the step stays a function of them for ``jax.vmap`` and optax's
``inject_hyperparams``. What changes the program selects it: whether the observation carries θ (weight
decay) by the pytree passed, a variant (AdamW's decoupled decay) as a static argument. Float64 runs
inside ``jax.enable_x64`` for the duration of each call (``precision``), so the user's process keeps
jax's float32 default (spec/backends.md#jax).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..._core import Observation
from ...errors import ObservationError, StateError
from ...spec import check_hyperparameters

DTYPES = {"float64": jnp.float64, "float32": jnp.float32}
COUNTER_DTYPE = jnp.int32


def precision(dtype: str):
    """The scope every call into jax runs in: x64 on for float64 and off for float32, whatever the
    process's own setting, so a compiled step is the same program in either and nothing leaks out
    (``jax.enable_x64`` is a thread-local configuration context)."""
    return jax.enable_x64(dtype == "float64")


# --------------------------------------------------------------------------- the reduction


def reduce_sum(partials: Sequence[jax.Array]) -> jax.Array:
    """Σ of per-leaf partial sums (each of the same shape): the step's one reduction across the parameter
    pytree. A sharded run replaces this with ``lax.psum`` over the mesh axis (spec/backends.md#jax)."""
    return jnp.sum(jnp.stack(list(partials)), axis=0)


# --------------------------------------------------------------------------- structures


@dataclass(frozen=True)
class Structure:
    """The pytree structure and leaf shapes of the parameters; ``single`` when they were one 1-D array."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtype: str

    @property
    def single(self) -> bool:
        return jax.tree_util.treedef_is_leaf(self.treedef)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def n(self) -> int:
        return sum(self.sizes)

    def unflatten(self, leaves):
        return jax.tree_util.tree_unflatten(self.treedef, list(leaves))

    def zeros(self):
        """A pytree of zeros shaped like the parameters."""
        return self.unflatten(jnp.zeros(s, DTYPES[self.dtype]) for s in self.shapes)

    def join(self, tree) -> jax.Array:
        """A parameter-shaped pytree as the flat (n,) vector of the spec (a view at the host boundary; no
        step concatenates)."""
        leaves = jax.tree_util.tree_leaves(tree)
        if self.single:
            return leaves[0]
        if not leaves:
            return jnp.zeros(0, DTYPES[self.dtype])
        return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])

    def split(self, flat: jax.Array):
        """A flat (n,) array as a parameter-shaped pytree."""
        offsets = np.cumsum([0, *self.sizes])
        return self.unflatten(flat[a:b].reshape(s) for a, b, s in zip(offsets, offsets[1:], self.shapes))


@jax.jit
def _all_finite(leaves) -> jax.Array:
    """Whether every entry of every leaf is finite: one fused reduction per leaf, one value to read."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _check_finite(name: str, leaves: list, error: type) -> None:
    """``error(name, …)`` at the first non-finite entry, after one compiled check (one host read)."""
    if not leaves or bool(_all_finite(leaves)):
        return
    offset = 0
    for leaf in leaves:
        flat = np.asarray(leaf).reshape(-1)
        bad = np.flatnonzero(~np.isfinite(flat))
        if bad.size:
            raise error(name, f"must be finite, got {flat[bad[0]]} at flat index {offset + int(bad[0])}")
        offset += flat.size


def as_leaves(name: str, value, error: type, dtype: str, structure: Structure | None = None):
    """``value`` (a pytree of arrays) as its list of real, finite leaves in ``dtype`` and the structure
    they form, or ``error(name, …)``. A single array must be a vector, the spec's θ ∈ ℝⁿ; any other
    pytree may hold leaves of any shapes. Against ``structure``: the same tree and leaf shapes. Call
    inside ``precision(dtype)``."""
    items, treedef = jax.tree_util.tree_flatten(value)
    leaves = []
    for item in items:
        try:
            array = item if isinstance(item, jax.Array) else np.asarray(item)
        except Exception as exc:  # ragged lists and other non-arrays
            raise error(name, f"is not an array ({exc})") from None
        if array.dtype.kind not in "fiu":
            raise error(name, f"must be a real array, got dtype {array.dtype}")
        leaves.append(array)
    shapes = tuple(tuple(leaf.shape) for leaf in leaves)
    single = jax.tree_util.treedef_is_leaf(treedef)
    if single and len(shapes[0]) != 1:
        raise error(name, f"must be a vector of shape (n,), got shape {shapes[0]}")
    if structure is not None and (treedef != structure.treedef or shapes != structure.shapes):
        if structure.single and single:
            raise error(name, f"must have shape ({structure.n},), got {shapes[0]}")
        raise error(
            name, f"must have the parameters' structure {structure.treedef} with leaf shapes {list(structure.shapes)}"
        )
    leaves = [jnp.asarray(leaf, DTYPES[dtype]) for leaf in leaves]
    _check_finite(name, leaves, error)
    return leaves, Structure(treedef, shapes, dtype)


# --------------------------------------------------------------------------- state layouts


class Layout(abc.ABC):
    """How one spec state field is stored in an algorithm's state pytree, and shown flat."""

    @abc.abstractmethod
    def flat(self, stored, structure: Structure):
        """The spec's view of the stored value."""

    @abc.abstractmethod
    def store(self, name: str, value, structure: Structure):
        """An ``init`` override (flat, as the spec shows the field) as stored, or ``StateError``."""


class PerParameter(Layout):
    """(n,): a pytree of the parameters' structure."""

    def flat(self, stored, structure):
        return structure.join(stored)

    def store(self, name, value, structure):
        (flat,), _ = as_leaves(name, [value], StateError, structure.dtype)
        if flat.shape != (structure.n,):
            raise StateError(name, f"must have shape ({structure.n},), got {tuple(flat.shape)}")
        return structure.split(flat)


class Counter(Layout):
    """A non-negative int (a step counter), an int32 scalar in the pytree so a compiled step advances it;
    shown as a Python int."""

    def flat(self, stored, structure):
        return int(stored)

    def store(self, name, value, structure):
        if isinstance(value, (jax.Array, np.ndarray)) and value.shape == () and value.dtype.kind in "iu":
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise StateError(name, f"must be a non-negative integer, got {value!r}")
        if value > np.iinfo(np.int32).max:
            raise StateError(name, f"must fit an int32 counter, got {value}")
        return jnp.asarray(value, COUNTER_DTYPE)


PARAM, COUNTER = PerParameter(), Counter()


@jax.tree_util.register_pytree_node_class
class State:
    """An algorithm's state pytree (``tree``, a NamedTuple) on a parameter structure, each spec field
    shown flat as an attribute. A pytree itself (its leaves are the tree's), so it checkpoints and passes
    through ``jax.jit`` as any other; F returns a new one."""

    def __init__(self, tree: NamedTuple, structure: Structure, layouts: Mapping[str, Layout]):
        object.__setattr__(self, "tree", tree)
        object.__setattr__(self, "structure", structure)
        object.__setattr__(self, "_layouts", layouts)

    def __getattr__(self, name):
        layouts = object.__getattribute__(self, "_layouts")
        if name not in layouts:
            raise AttributeError(name)
        with precision(self.structure.dtype):
            return layouts[name].flat(getattr(self.tree, name), self.structure)

    def __setattr__(self, name, value):
        raise AttributeError("a State is a value: F returns a new one")

    def fields(self) -> dict:
        """The spec's fields, flat."""
        return {name: getattr(self, name) for name in self._layouts}

    def tree_flatten(self):
        return (self.tree,), (self.structure, tuple(self._layouts.items()))

    @classmethod
    def tree_unflatten(cls, aux, children):
        structure, layouts = aux
        return cls(children[0], structure, dict(layouts))


# --------------------------------------------------------------------------- optimizers


class Optimizer(abc.ABC):
    """Base of the jax optimizers: the (F, G) contract of spec/formalism.md on parameter pytrees.

    Subclasses set ``algo``, ``layouts`` (spec field → Layout, in the order of ``StateTree``'s fields) and
    ``StateTree`` (the NamedTuple), and implement the pure functions ``initial_state`` (S_0 of a
    structure), ``step_F`` and ``step_G`` of (scalars, static, state, grad, params), where scalars is
    ``self.scalars()`` (traced, in the working precision), static ``self.static()`` (hashable, compiled
    in), grad and params parameter-shaped pytrees (params None unless observed). ``F`` and ``G`` check on
    the host, then call the compiled functions inside ``precision``.
    """

    algo: str
    layouts: Mapping[str, Layout]
    StateTree: type

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "step_F" in cls.__dict__:
            cls._compiled_F = staticmethod(jax.jit(cls.step_F, static_argnums=1))
        if "step_G" in cls.__dict__:
            cls._compiled_G = staticmethod(jax.jit(cls.step_G, static_argnums=1))

    def __init__(self, dtype: str = "float64", needs=frozenset({"grad"}), **hyperparameters):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.hyperparameters = dict(hyperparameters)
        self.__dict__.update(hyperparameters)
        self.dtype, self.needs = dtype, frozenset(needs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"jax.{self.algo}({args})"

    # -- the contract -------------------------------------------------------------------

    def init(self, theta0, **initial_state) -> State:
        """S_0 for parameters ``theta0`` (a vector or any pytree of arrays); keyword arguments override any
        field, given flat as the spec shows it."""
        with precision(self.dtype):
            params, structure = as_leaves("theta0", theta0, StateError, self.dtype)
            stored = self.initial_state(structure)._asdict()
            for name, value in initial_state.items():
                if name not in self.layouts:
                    raise StateError(name, f"is not a state field of {self.algo}; fields: {sorted(self.layouts)}")
                stored[name] = self.layouts[name].store(name, value, structure)
        return State(self.StateTree(**stored), structure, self.layouts)

    def F(self, state: State, obs) -> State:
        """S_t = F(S_{t-1}, obs_t), a new state."""
        with precision(self.dtype):
            grad, params = self.check_observation(obs, state.structure)
            tree = self._compiled_F(self.scalars(), self.static(), state.tree, grad, params)
        return State(tree, state.structure, self.layouts)

    def G(self, state: State, obs):
        """θ_t − θ_{t-1} = G(S_t, obs_t), a pytree of the parameters' structure."""
        with precision(self.dtype):
            grad, params = self.check_observation(obs, state.structure)
            self.check_G(state)
            return self._compiled_G(self.scalars(), self.static(), state.tree, grad, params)

    # -- hooks ----------------------------------------------------------------------------

    @abc.abstractmethod
    def initial_state(self, structure: Structure) -> NamedTuple:
        """S_0 as the algorithm's StateTree."""

    @staticmethod
    @abc.abstractmethod
    def step_F(scalars, static, state, grad, params):
        """S_{t-1} → S_t, pure."""

    @staticmethod
    @abc.abstractmethod
    def step_G(scalars, static, state, grad, params):
        """The update, a parameter-shaped pytree, pure."""

    def scalars(self) -> dict:
        """The traced hyperparameters (and host-derived constants such as 1 − β), in the working precision."""
        return {}

    def static(self) -> tuple:
        """What is compiled in: hashable, it selects a program (AdamW's decoupled decay)."""
        return ()

    def check_G(self, state: State) -> None:  # noqa: B027 (most algorithms check nothing)
        """Host checks of the state G needs (Adam's t ≥ 1)."""

    def as_scalars(self, **values: float) -> dict:
        """Host floats as 0-d arrays of the working precision: traced, never compiled in."""
        return {name: jnp.asarray(value, DTYPES[self.dtype]) for name, value in values.items()}

    # -- validation -----------------------------------------------------------------------

    def check_observation(self, obs, structure: Structure):
        """(grad, params) as parameter-shaped pytrees of the working precision, params None unless
        observed, or ``ObservationError`` naming the field. Call inside ``precision``."""
        if not isinstance(obs, Observation):
            raise ObservationError("obs", f"must be a stepspec.Observation, got {type(obs).__name__}")
        for name in sorted(self.needs):
            if getattr(obs, name) is None:
                raise ObservationError(
                    name, f"{self.algo} needs Observation.{name} (spec/formalism.md#observation); it is None"
                )
        grad, _ = as_leaves("grad", obs.grad, ObservationError, self.dtype, structure)
        params = None
        if "params" in self.needs:
            params, _ = as_leaves("params", obs.params, ObservationError, self.dtype, structure)
            params = structure.unflatten(params)
        return structure.unflatten(grad), params


def hyperparameters(algo: str, **values) -> dict:
    """The spec table's validation (domains, defaults, types), as the reference applies it."""
    return check_hyperparameters(algo, **values)
