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
import itertools
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..._core import Observation
from ...errors import ObservationError, StateError
from .. import _structured
from .._structured import Layout, Shapes, host_counter, raise_first_non_finite
from .._structured import hyperparameters as hyperparameters

DTYPES = {"float64": jnp.float64, "float32": jnp.float32}
COUNTER_DTYPE = jnp.int32


def precision(dtype: str):
    """The scope every call into jax runs in: x64 on for float64 and off for float32, whatever the
    process's own setting, so a compiled step is the same program in either and nothing leaks out
    (``jax.enable_x64`` is a thread-local configuration context)."""
    return jax.enable_x64(dtype == "float64")


def log(x):
    """log x for a hyperparameter-derived constant: computed on the host in float64 (−inf at 0) when x is a
    number, then rounded once to the working precision by ``as_scalars``, so float32 does not take the log of
    a rounded x (log of float32(0.999) is off by 1.3e-5 relative in 1 − β); ``jnp.log`` when x is traced (a
    hyperparameter injected by optax)."""
    if isinstance(x, (int, float, np.integer, np.floating)):
        return math.log(x) if x > 0 else -math.inf
    return jnp.log(x)


# --------------------------------------------------------------------------- the reduction


def reduce_sum(partials: Sequence[jax.Array]) -> jax.Array:
    """Σ of per-leaf partial sums (each of the same shape): the step's one reduction across the parameter
    pytree. A sharded run replaces this with ``lax.psum`` over the mesh axis (spec/backends.md#jax)."""
    return jnp.sum(jnp.stack(list(partials)), axis=0)


# --------------------------------------------------------------------------- structures


@dataclass(frozen=True)
class Structure(Shapes):
    """The pytree structure and leaf shapes of the parameters; ``single`` when they were one 1-D array."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtype: str

    @property
    def single(self) -> bool:
        return jax.tree_util.treedef_is_leaf(self.treedef)

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
    raise_first_non_finite(name, leaves, error)


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


class PerParameter(Layout):
    """(n,): a pytree of the parameters' structure."""

    def flat(self, stored, structure):
        return structure.join(stored)

    def store(self, name, value, structure, default=None):
        (flat,), _ = as_leaves(name, [value], StateError, structure.dtype)
        if flat.shape != (structure.n,):
            raise StateError(name, f"must have shape ({structure.n},), got {tuple(flat.shape)}")
        return structure.split(flat)


class Counter(Layout):
    """A non-negative int (a step counter), an int32 scalar in the pytree so a compiled step advances it;
    shown as a Python int."""

    def flat(self, stored, structure):
        return int(stored)

    def store(self, name, value, structure, default=None):
        if isinstance(value, jax.Array) and value.shape == () and value.dtype.kind in "iu":
            value = int(value)
        value = host_counter(name, value)
        if value > np.iinfo(np.int32).max:
            raise StateError(name, f"must fit an int32 counter, got {value}")
        return jnp.asarray(value, COUNTER_DTYPE)


class Columns(Layout):
    """(b·n, k): b stacked blocks of k columns over the parameters (b = 1 for RLLC's memory M; MetaOptimize's
    trace X = [X_θ; X_m; X_v] has b = 3). Stored as a tuple of b pytrees of the parameters' structure whose
    leaves carry the columns first, shape (k, *leaf.shape): each column of each leaf is contiguous, so a
    per-column update is one elementwise pass and Mᵀg a sum of per-leaf contractions. ``k`` is read from
    the stored value, so ``init`` overrides must keep the default's."""

    def __init__(self, blocks: int = 1):
        self.blocks = blocks

    @staticmethod
    def columns(block) -> int:
        leaves = jax.tree_util.tree_leaves(block)
        return leaves[0].shape[0] if leaves else 0

    def flat(self, stored, structure):
        k = self.columns(stored[0])
        blocks = [
            jnp.concatenate([jnp.reshape(leaf, (k, -1)) for leaf in jax.tree_util.tree_leaves(block)], axis=1).T
            if structure.n
            else jnp.zeros((0, k), DTYPES[structure.dtype])
            for block in stored
        ]
        return jnp.concatenate(blocks, axis=0)

    def store(self, name, value, structure, default=None):
        k = self.columns(default[0])
        (flat,), _ = as_leaves(name, [value], StateError, structure.dtype)
        expected = (self.blocks * structure.n, k)
        if tuple(flat.shape) != expected:
            raise StateError(name, f"must have shape {expected}, got {tuple(flat.shape)}")
        return tuple(self.split(flat[b * structure.n : (b + 1) * structure.n], structure) for b in range(self.blocks))

    @staticmethod
    def split(flat: jax.Array, structure: Structure):
        """An (n, k) array as a pytree of leaves (k, *leaf.shape)."""
        offsets = np.cumsum([0, *structure.sizes])
        k = flat.shape[1]
        return structure.unflatten(
            flat[a:b].T.reshape((k, *s)) for a, b, s in zip(offsets, offsets[1:], structure.shapes)
        )


class Whole(Layout):
    """A field without n (RLLC's law L (k,), MetaOptimize's β (m,), full TO's A (n, n)): one array."""

    def flat(self, stored, structure):
        return stored

    def store(self, name, value, structure, default=None):
        (array,), _ = as_leaves(name, [value], StateError, structure.dtype)
        if array.shape != default.shape:
            raise StateError(name, f"must have shape {tuple(default.shape)}, got {tuple(array.shape)}")
        return array


class Scalar(Layout):
    """A real scalar (ELRA's α, a loss statistic): a 0-d array of the working precision in the pytree, so the
    compiled step reads and writes it; shown as a Python float."""

    def flat(self, stored, structure):
        return float(stored)

    def store(self, name, value, structure, default=None):
        (array,), _ = as_leaves(name, [value], StateError, structure.dtype)
        if array.shape != ():
            raise StateError(name, f"must have shape (), got {tuple(array.shape)}")
        return array


PARAM, COUNTER, WHOLE, SCALAR = PerParameter(), Counter(), Whole(), Scalar()


@jax.tree_util.register_pytree_node_class
class State(_structured.FlatFields):
    """An algorithm's state pytree (``tree``, a NamedTuple, what the compiled F and G take and return) on a
    parameter structure, each spec field shown flat. A pytree itself (its leaves are the tree's), so it
    checkpoints and passes through ``jax.jit`` as any other; F returns a new one."""

    def __init__(self, tree: NamedTuple, structure: Structure, layouts: Mapping[str, Layout]):
        object.__setattr__(self, "tree", tree)
        object.__setattr__(self, "structure", structure)
        object.__setattr__(self, "_layouts", layouts)

    def _flat(self, name, layout):
        with precision(self.structure.dtype):
            return layout.flat(getattr(self.tree, name), self.structure)

    def tree_flatten(self):
        return (self.tree,), (self.structure, tuple(self._layouts.items()))

    @classmethod
    def tree_unflatten(cls, aux, children):
        structure, layouts = aux
        return cls(children[0], structure, dict(layouts))


# --------------------------------------------------------------------------- observations


@jax.tree_util.register_pytree_node_class
class StepInput:
    """An observation as the compiled step takes it: ``grad`` and ``params`` parameter-shaped pytrees,
    ``loss`` a 0-d array (None where the algorithm does not observe them), and the curvature products
    ``hvp(v)`` = ∇²f v and ``third(u, v)`` = ∇³f[u, v] of parameter-shaped pytrees.

    The products are jax-traceable functions (an optax user's ``hvp_fn``, traced into the step), or, for a
    host observation, ``HOST_PRODUCTS``: one fixed function that calls back to the host through
    ``jax.pure_callback`` with ``token`` naming the observation, so that one compilation serves every
    observation however its products are computed."""

    def __init__(self, grad, params=None, loss=None, products=None, token=None):
        self.grad, self.params, self.loss, self.products, self.token = grad, params, loss, products, token

    def hvp(self, v):
        return self.products.hvp(self.token, v)

    def third(self, u, v):
        return self.products.third(self.token, u, v)

    def tree_flatten(self):
        return (self.grad, self.params, self.loss, self.token), self.products

    @classmethod
    def tree_unflatten(cls, products, children):
        grad, params, loss, token = children
        return cls(grad, params, loss, products, token)


@dataclass(frozen=True)
class TracedProducts:
    """Curvature products as jax functions of parameter-shaped pytrees, traced into the step (the optax
    transformations' ``hvp_fn`` and ``third_fn``)."""

    hvp_fn: Callable | None = None
    third_fn: Callable | None = None

    def hvp(self, token, v):
        return self.hvp_fn(v)

    def third(self, token, u, v):
        return self.third_fn(u, v)


def traced_products(value_fn: Callable | None, params, hvp_fn: Callable | None, third_fn: Callable | None):
    """The curvature products at ``params`` for a step traced by the caller (optax, a sweep): the given
    ``hvp_fn`` / ``third_fn``, else ∇²f v and ∇³f[u, v] of ``value_fn`` by forward-over-reverse differentiation."""
    if value_fn is not None:
        grad_fn = jax.grad(value_fn)
        if hvp_fn is None:

            def hvp_fn(v):
                return jax.jvp(grad_fn, (params,), (v,))[1]

        if third_fn is None:

            def third_fn(u, v):
                return jax.jvp(lambda p: jax.jvp(grad_fn, (p,), (u,))[1], (params,), (v,))[1]

    return TracedProducts(hvp_fn, third_fn)


_HOST_OBSERVATIONS: dict[int, list] = {}
"""token → [observation, structure, the first exception its products raised (None)]."""
_TOKENS = itertools.count()
_TOKENS_LOCK = threading.Lock()


def _call_host(kind: str, token, *vectors):
    """The host observation's product ``kind`` of host vectors (NumPy leaves in the parameters' order), as
    NumPy leaves. An exception (a product that fails, or returns a wrong shape or a non-finite entry) is kept
    for ``call_compiled`` to raise once the step is done, and zeros go back: a callback cannot raise through
    the compiled program with its class intact."""
    entry = _HOST_OBSERVATIONS[int(token)]
    obs, structure, _ = entry
    wide = structure.dtype == "float64"
    try:
        with precision(structure.dtype):
            args = [
                structure.unflatten(
                    jnp.asarray(_host_from_wire(leaf) if wide else leaf) for leaf in jax.tree_util.tree_leaves(vector)
                )
                for vector in vectors
            ]
            result, _ = as_leaves(kind, getattr(obs, kind)(*args), ObservationError, structure.dtype, structure)
        result = [np.asarray(leaf) for leaf in result]
    except Exception as exc:
        if entry[2] is None:
            entry[2] = exc
        result = [np.zeros(shape, DTYPES[structure.dtype]) for shape in structure.shapes]
    return [_host_to_wire(leaf) for leaf in result] if wide else result


def _to_wire(x: jax.Array) -> jax.Array:
    """A float64 array as the uint32 pairs of its bits, (*shape, 2); other dtypes as they are. jax converts a
    callback's float64 operands and results to float32 when the thread XLA runs it on (a worker thread, for a
    callback inside a loop scheduled beside other work) does not have x64 enabled; 32-bit words pass
    unchanged on any thread."""
    return jax.lax.bitcast_convert_type(x, jnp.uint32) if x.dtype == jnp.float64 else x


def _from_wire(x: jax.Array, dtype) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, jnp.float64) if dtype == jnp.float64 else x


def _host_from_wire(words) -> np.ndarray:
    return np.array(words, order="C").view(np.float64)[..., 0]


def _host_to_wire(values) -> np.ndarray:
    return np.array(values, np.float64, order="C")[..., None].view(np.uint32)


class HostProducts:
    """The products of the host observation ``token`` names, called back through ``jax.pure_callback``
    (sequentially, in program order), their results checked like observations."""

    @staticmethod
    def _product(kind, token, *vectors):
        like = jax.tree_util.tree_leaves(vectors[0])
        shapes = [jax.eval_shape(_to_wire, leaf) for leaf in like]
        treedef = jax.tree_util.tree_structure(vectors[0])
        wired = jax.tree_util.tree_map(_to_wire, vectors)
        leaves = jax.pure_callback(lambda token, *vectors: _call_host(kind, token, *vectors), shapes, token, *wired)
        return jax.tree_util.tree_unflatten(treedef, [_from_wire(x, leaf.dtype) for x, leaf in zip(leaves, like)])

    def hvp(self, token, v):
        return self._product("hvp", token, v)

    def third(self, token, u, v):
        return self._product("third", token, u, v)

    def __eq__(self, other):
        return isinstance(other, HostProducts)

    def __hash__(self):
        return hash(HostProducts)


HOST_PRODUCTS = HostProducts()


def call_compiled(compiled: Callable, obs: Observation, structure: Structure, scalars, static, tree, step, *rest):
    """``compiled(scalars, static, tree, step, *rest)`` for a host observation. When the observation has
    curvature products, they are registered under a fresh token for the call's duration (its results are
    waited for before they are unregistered) and the step input carries ``HOST_PRODUCTS`` and the token."""
    if obs.hvp is None and obs.third is None:
        return compiled(scalars, static, tree, step, *rest)
    with _TOKENS_LOCK:
        token = next(_TOKENS) % np.iinfo(np.int32).max
    entry = _HOST_OBSERVATIONS[token] = [obs, structure, None]
    try:
        step = StepInput(step.grad, step.params, step.loss, HOST_PRODUCTS, jnp.asarray(token, COUNTER_DTYPE))
        result = jax.block_until_ready(compiled(scalars, static, tree, step, *rest))
    finally:
        del _HOST_OBSERVATIONS[token]
    if entry[2] is not None:
        raise entry[2]
    return result


# --------------------------------------------------------------------------- optimizers


class Optimizer(_structured.Optimizer):
    """Base of the jax optimizers: the (F, G) contract of spec/formalism.md on parameter pytrees.

    Subclasses set ``algo``, ``layouts`` (spec field → Layout, in the order of ``StateTree``'s fields) and
    ``StateTree`` (the NamedTuple), and implement the pure functions ``initial_state`` (S_0 of a
    structure), ``step_F`` and ``step_G`` of (scalars, static, state, grad, params), where scalars is
    ``self.scalars()`` (traced, in the working precision), static ``self.static()`` (hashable, compiled
    in), grad and params parameter-shaped pytrees (params None unless observed). ``F`` and ``G`` check on
    the host, then call the compiled functions inside ``precision``.
    """

    backend = "jax"
    StateTree: type

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "step_F" in cls.__dict__:
            cls._compiled_F = staticmethod(jax.jit(cls.step_F, static_argnums=1))
        if "step_G" in cls.__dict__:
            cls._compiled_G = staticmethod(jax.jit(cls.step_G, static_argnums=1))
        cls._compiled_step = staticmethod(jax.jit(cls.pure_step, static_argnums=1))

    def __init__(self, dtype: str = "float64", needs=frozenset({"grad"}), **hyperparameters):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        super().__init__(needs, hyperparameters)
        self.dtype = dtype

    # -- the contract -------------------------------------------------------------------

    def init(self, theta0, **initial_state) -> State:
        """S_0 for parameters ``theta0`` (a vector or any pytree of arrays); keyword arguments override any
        field, given flat as the spec shows it."""
        with precision(self.dtype):
            params, structure = as_leaves("theta0", theta0, StateError, self.dtype)
            stored = self.overridden(self.initial_state(structure)._asdict(), initial_state, structure)
        return State(self.StateTree(**stored), structure, self.layouts)

    def F(self, state: State, obs) -> State:
        """S_t = F(S_{t-1}, obs_t), a new state."""
        with precision(self.dtype):
            step = self.check_observation(obs, state.structure)
            self.check_F(state, step)
            tree = call_compiled(
                self._compiled_F, obs, state.structure, self.host_scalars(), self.static(), state.tree, step
            )
            self.check_result(state, tree)
        return State(tree, state.structure, self.layouts)

    def G(self, state: State, obs):
        """θ_t − θ_{t-1} = G(S_t, obs_t), a pytree of the parameters' structure."""
        with precision(self.dtype):
            step = self.check_observation(obs, state.structure)
            self.check_G(state)
            return call_compiled(
                self._compiled_G, obs, state.structure, self.host_scalars(), self.static(), state.tree, step
            )

    def step(self, state: State, obs, params):
        """(S_t, θ_t) from (S_{t-1}, θ_{t-1}): F, G and θ + G as one compiled call, the form a training loop
        runs (``obs`` observed at ``params``)."""
        with precision(self.dtype):
            step = self.check_observation(obs, state.structure)
            if step.params is not None and obs.params is params:
                params = step.params  # checked once, as the observation's
            else:
                leaves, _ = as_leaves("params", params, ObservationError, self.dtype, state.structure)
                params = state.structure.unflatten(leaves)
            self.check_F(state, step)
            tree, params = call_compiled(
                self._compiled_step,
                obs,
                state.structure,
                self.host_scalars(),
                self.static(),
                state.tree,
                step,
                params,
            )
            self.check_result(state, tree)
        return State(tree, state.structure, self.layouts), params

    @classmethod
    def pure_step(cls, scalars, static, tree, step: StepInput, params):
        """(F, then θ + G) as one pure function of the state tree and the parameters: what ``step``
        compiles, and what a jitted training loop or ``jax.vmap`` over hyperparameters traces."""
        tree = cls.step_F(scalars, static, tree, step)
        update = cls.step_G(scalars, static, tree, step)
        return tree, jax.tree_util.tree_map(lambda p, u: p + u, params, update)

    # -- hooks ----------------------------------------------------------------------------

    @abc.abstractmethod
    def initial_state(self, structure: Structure) -> NamedTuple:
        """S_0 as the algorithm's StateTree."""

    @staticmethod
    @abc.abstractmethod
    def step_F(scalars, static, state, step: StepInput):
        """S_{t-1} → S_t, pure."""

    @staticmethod
    @abc.abstractmethod
    def step_G(scalars, static, state, step: StepInput):
        """The update, a parameter-shaped pytree, pure."""

    def scalars(self) -> dict:
        """The traced hyperparameters (and host-derived constants such as 1 − β), in the working precision."""
        return {}

    def static(self) -> tuple:
        """What is compiled in: hashable, it selects a program (AdamW's decoupled decay)."""
        return ()

    def check_F(self, state: State, step: StepInput) -> None:  # noqa: B027 (most algorithms check nothing)
        """Host checks F makes before the compiled call (values a compiled step cannot raise on)."""

    def check_result(self, state: State, tree: NamedTuple) -> None:  # noqa: B027 (most algorithms check nothing)
        """Host checks of F's compiled result ``tree`` from ``state``: errors only the step's values reveal (a
        singular memory matrix) are raised here from a status the step records in ``tree``, and ``state``
        is left as it was. ``StateTree`` may carry such fields beside the spec's (``layouts`` names only
        the spec's)."""

    @staticmethod
    def step_ok(old_tree: NamedTuple, new_tree: NamedTuple) -> jax.Array:
        """Whether F's step from ``old_tree`` is one the host would accept (``check_result``), as a traced
        bool: the optax transformations, which cannot raise inside ``jax.jit``, skip a step that is not."""
        return jnp.asarray(True)

    def check_G(self, state: State) -> None:  # noqa: B027 (most algorithms check nothing)
        """Host checks of the state G needs (Adam's t ≥ 1)."""

    def host_scalars(self) -> dict:
        """``scalars()`` made once per optimizer for the host calls: building a 0-d array is a dispatch of its
        own (about 60 µs each, 80% of a host F + G for Adam before this cache)."""
        cached = self.__dict__.get("_host_scalars")
        if cached is None:
            cached = self.__dict__["_host_scalars"] = self.scalars()
        return cached

    def as_scalars(self, **values: float) -> dict:
        """Host floats as 0-d arrays of the working precision: traced, never compiled in."""
        return {name: jnp.asarray(value, DTYPES[self.dtype]) for name, value in values.items()}

    # -- validation -----------------------------------------------------------------------

    def check_observation(self, obs, structure: Structure) -> StepInput:
        """The observation as a ``StepInput`` of the working precision (fields this algorithm does not need
        are None), or ``ObservationError`` naming the field. Call inside ``precision``."""
        self.check_needs(obs)
        grad, _ = as_leaves("grad", obs.grad, ObservationError, self.dtype, structure)
        params = loss = None
        if "params" in self.needs:
            params, _ = as_leaves("params", obs.params, ObservationError, self.dtype, structure)
            params = structure.unflatten(params)
        if "loss" in self.needs:
            (loss,), _ = as_leaves("loss", [obs.loss], ObservationError, self.dtype)
            if loss.shape != ():
                raise ObservationError("loss", f"must have shape (), got {tuple(loss.shape)}")
        return StepInput(structure.unflatten(grad), params, loss)
