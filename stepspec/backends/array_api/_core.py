"""The array-API backend's core: the namespace, parameter structures, state layouts, input checks, the one
reduction and the fused elementwise pass (spec/backends.md#array-api).

Every algorithm of this backend is written once against the Python array API standard: the functions and
operators of a ``Namespace``'s ``xp`` (``array_api_strict``, ``array_api_compat.numpy``,
``array_api_compat.cupy``), nothing else. Two places differ by namespace, and only here:

- ``Namespace.reduce_sum``: the step's one reduction round, per-leaf partial sums stacked and summed once —
  where a multi-device backend would put its collective;
- ``Namespace.fused``: an algorithm's elementwise update, written as a function of arrays and scalars with
  operators and ``xp`` functions only; under cupy it is compiled by ``cupy.fuse`` into one kernel (each
  array read and written once), elsewhere it runs as written (one pass per operation).

A parameter structure is a list of arrays of any shapes, or one 1-D array (the spec's θ ∈ ℝⁿ). State
fields keep their spec meaning over the concatenation of the parameters: a field of shape (n,) is stored as
one array per parameter, a field of shape (b·n, k) as b lists of arrays (k, *shape) (the k columns of each
parameter contiguous), a field without n once. ``State`` shows every field flat, as spec/formalism.md
defines it. F returns a new State; nothing is updated in place, so a step that raises leaves the state it
was given as it was.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ...errors import ObservationError, StateError
from .. import _structured
from .._structured import Layout, Shapes, State, StepInput, host_scalar, raise_first_non_finite
from .._structured import hyperparameters as hyperparameters

# --------------------------------------------------------------------------- the namespace


@dataclass(eq=False)
class Namespace:
    """An array namespace in one working precision: ``xp`` (array-API compatible), ``dtype`` ("float64" or
    "float32"), ``device`` (None: the namespace's default), and ``kernels``, the module whose ``fuse``
    compiles elementwise passes (cupy), or None."""

    xp: object
    dtype: str
    device: object = None
    kernels: object = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def float(self):
        return getattr(self.xp, self.dtype)

    @property
    def array_type(self) -> type:
        """The class of the namespace's arrays (what ``as_arrays`` takes without a host round trip)."""
        if "array_type" not in self._cache:
            self._cache["array_type"] = type(self.xp.zeros(0))
        return self._cache["array_type"]

    def asarray(self, host) -> object:
        """A host value (NumPy array, list, scalar) as a native array; dtype kept."""
        return self.xp.asarray(np.asarray(host), device=self.device)

    def zeros(self, shape) -> object:
        return self.xp.zeros(tuple(shape), dtype=self.float, device=self.device)

    def scalar(self, value) -> object:
        """A 0-d array of the working precision (a device scalar: read by the host only where spec says)."""
        return self.xp.asarray(value, dtype=self.float, device=self.device)

    def to_numpy(self, x) -> np.ndarray:
        """A native array as a host NumPy array (one device-to-host copy)."""
        if hasattr(x, "get"):  # cupy
            return x.get()
        return np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x)

    def reduce_sum(self, partials: Sequence) -> object:
        """Σ of per-leaf partial sums of one shape (0-d, (k,), (k, k)): the step's one reduction across the
        parameter structure, one stacked sum. A multi-device backend replaces this by an all-reduce."""
        xp = self.xp
        if not partials:
            raise ValueError("reduce_sum of no partial sums: the shape of the result is unknown")
        return xp.sum(xp.stack(list(partials)), axis=0)

    def dots(self, xs: Sequence, ys: Sequence) -> list:
        """Per-leaf partial inner products ⟨x_i, y_i⟩ (to be combined by ``reduce_sum``)."""
        xp = self.xp
        return [xp.vecdot(xp.reshape(x, (-1,)), xp.reshape(y, (-1,))) for x, y in zip(xs, ys)]

    def inner(self, xs: Sequence, ys: Sequence) -> object:
        """⟨x, y⟩ over the whole structure, a 0-d array."""
        return self.reduce_sum(self.dots(xs, ys)) if xs else self.scalar(0.0)

    def fused(self, make: Callable) -> Callable:
        """The elementwise pass ``make(xp)`` returns, as one kernel where the namespace compiles them.

        ``make`` takes the namespace module and returns a function of arrays and scalars built from
        operators and elementwise ``xp`` functions, returning an array or a tuple of arrays. Under cupy
        its Python-float arguments are passed as scalars of the working dtype (a Python float would make
        the kernel compute in float64)."""
        if make not in self._cache:
            if self.kernels is None:
                self._cache[make] = make(self.xp)
            else:
                kernel = self.kernels.fuse(make(self.kernels))
                typed = np.dtype(self.dtype).type

                def call(*args, _kernel=kernel):
                    return _kernel(*(typed(a) if isinstance(a, float) else a for a in args))

                self._cache[make] = call
        return self._cache[make]

    def errors_ignored(self):
        """NumPy-backed namespaces warn on overflow and 0/0; the spec defines those results (IEEE), and
        torch, jax and cupy compute them silently, so the step does too."""
        if self.kernels is None:
            return np.errstate(all="ignore")
        return contextlib.nullcontext()


def over_leaves(kernel: Callable, arrays: Sequence[Sequence], *scalars, outputs: int = 1):
    """``kernel`` run parameter by parameter: ``arrays`` are lists over the structure (one entry per
    parameter), ``scalars`` shared. A kernel of ``outputs`` > 1 results gives a tuple of that many lists."""
    results = [kernel(*leaves, *scalars) for leaves in zip(*arrays)]
    if outputs == 1:
        return results
    return tuple([r[i] for r in results] for i in range(outputs))


# --------------------------------------------------------------------------- structures


@dataclass(frozen=True)
class Structure(Shapes):
    """The shapes of a parameter structure; ``single`` when it was given as one 1-D array."""

    shapes: tuple[tuple[int, ...], ...]
    single: bool
    ns: Namespace

    def zeros(self) -> list:
        return [self.ns.zeros(s) for s in self.shapes]

    def split(self, flat) -> list:
        """A flat (n,) array as one array per parameter, shaped like the parameters."""
        offsets = np.cumsum([0, *self.sizes])
        xp = self.ns.xp
        return [xp.reshape(flat[a:b], s) for a, b, s in zip(offsets, offsets[1:], self.shapes)]

    def join(self, parts: Sequence):
        """One array per parameter as the flat (n,) vector of the spec."""
        xp = self.ns.xp
        if not parts:
            return self.ns.zeros((0,))
        return xp.concat([xp.reshape(p, (-1,)) for p in parts])

    def as_given(self, parts: list):
        """An update in the form the parameters were given: one array, or a list."""
        return parts[0] if self.single else parts


def _kind(xp, array) -> str:
    """ "real", "bool", "complex" or "integer"."""
    for kind in ("real floating", "bool", "complex floating"):
        if xp.isdtype(array.dtype, kind):
            return kind.split()[0].replace("floating", "")
    return "integer"


def all_finite(ns: Namespace, arrays: Sequence) -> bool:
    """Whether every entry is finite, in one read of each array and one host read: a sum is finite only if
    every entry is (a NaN propagates, an infinity stays infinite or meets its opposite in a NaN), so the
    sums decide unless a sum of finite entries overflows, which the exact check then settles."""
    if not arrays:
        return True
    xp = ns.xp
    with ns.errors_ignored():
        if bool(xp.isfinite(ns.reduce_sum([xp.sum(a) for a in arrays]))):
            return True
    return all(bool(xp.all(xp.isfinite(a))) for a in arrays)


def _first_non_finite(ns: Namespace, name: str, arrays: Sequence, error: type) -> None:
    """Raise ``error`` at the first non-finite entry, after one check over all arrays (one host read)."""
    if all_finite(ns, arrays):
        return
    raise_first_non_finite(name, (ns.to_numpy(a) for a in arrays), error)


def _native(ns: Namespace, name: str, item, error: type):
    """``item`` as an array of the namespace: its own arrays as they are, anything else through the host."""
    xp = ns.xp
    if isinstance(item, ns.array_type):
        return item
    try:
        host = np.asarray(item)
    except Exception as exc:  # ragged lists and other non-arrays
        raise error(name, f"is not an array ({exc})") from None
    if host.dtype.kind not in "fbciu":
        raise error(name, f"must be a real array, got dtype {host.dtype}")
    return xp.asarray(host, device=ns.device)


def as_arrays(name: str, value, error: type, ns: Namespace, structure: Structure | None = None):
    """``value`` as a list of real, finite arrays of the working precision and the structure they form, or
    ``error(name, …)``. A single array must be a vector, the spec's θ ∈ ℝⁿ; a list or tuple is a structure
    of arrays of any shapes. Against ``structure``: the same shapes."""
    xp = ns.xp
    single = not isinstance(value, (list, tuple))
    arrays = []
    for item in [value] if single else list(value):
        array = _native(ns, name, item, error)
        kind = _kind(xp, array)
        if kind in ("bool", "complex"):
            raise error(name, f"must be a real array, got dtype {array.dtype}")
        arrays.append(array)
    if single and arrays[0].ndim != 1:
        raise error(name, f"must be a vector of shape (n,), got shape {tuple(arrays[0].shape)}")
    if structure is not None:
        shapes = tuple(tuple(a.shape) for a in arrays)
        if shapes != structure.shapes:
            if structure.single and single:
                raise error(name, f"must have shape ({structure.n},), got {tuple(arrays[0].shape)}")
            raise error(name, f"must have the parameter shapes {list(structure.shapes)}, got {list(shapes)}")
    arrays = [a if a.dtype == ns.float else xp.astype(a, ns.float) for a in arrays]
    _first_non_finite(ns, name, arrays, error)
    return arrays, Structure(tuple(tuple(a.shape) for a in arrays), single, ns)


def _host(ns: Namespace, value):
    """A native array (anything with a shape that is not NumPy's) as a host NumPy array; host values as
    they are."""
    if not isinstance(value, (int, float, np.ndarray, np.generic)) and hasattr(value, "shape"):
        return ns.to_numpy(value)
    return value


def as_host_scalar(ns: Namespace, name: str, value, error: type) -> float:
    """A real finite scalar (the loss, a scalar state field) as a Python float: host scalars stay float64."""
    return host_scalar(name, _host(ns, value), error)


# --------------------------------------------------------------------------- state layouts


class PerParameter(Layout):
    """(n,): one array per parameter, shaped like it."""

    def flat(self, stored, structure):
        return structure.join(stored)

    def store(self, name, value, structure, default):
        (flat,), _ = as_arrays(name, [value], StateError, structure.ns)
        if tuple(flat.shape) != (structure.n,):
            raise StateError(name, f"must have shape ({structure.n},), got {tuple(flat.shape)}")
        return structure.split(flat)


class Columns(Layout):
    """(b·n, k): b stacked blocks of k columns (b = 1 for RLLC's memory M; MetaOptimize's trace
    X = [X_θ; X_m; X_v] has b = 3). Stored as stored[block][i], an array (k, *shape_i) per parameter:
    each column of each parameter is contiguous, so a per-column update is one elementwise pass over it
    and Mᵀg a sum of per-parameter contractions."""

    def __init__(self, blocks: int = 1):
        self.blocks = blocks

    @staticmethod
    def columns(block) -> int:
        return block[0].shape[0] if block else 0

    def flat(self, stored, structure):
        xp = structure.ns.xp
        k = self.columns(stored[0])
        if not structure.n:
            return structure.ns.zeros((0, k))
        blocks = [
            xp.matrix_transpose(xp.concat([xp.reshape(leaf, (k, -1)) for leaf in block], axis=1)) for block in stored
        ]
        return xp.concat(blocks, axis=0)

    def store(self, name, value, structure, default):
        k = self.columns(default[0])
        (flat,), _ = as_arrays(name, [value], StateError, structure.ns)
        expected = (self.blocks * structure.n, k)
        if tuple(flat.shape) != expected:
            raise StateError(name, f"must have shape {expected}, got {tuple(flat.shape)}")
        n = structure.n
        return [self.split(flat[b * n : (b + 1) * n, :], structure) for b in range(self.blocks)]

    @staticmethod
    def split(flat, structure: Structure) -> list:
        """An (n, k) array as one array (k, *shape) per parameter."""
        xp = structure.ns.xp
        k = flat.shape[1]
        offsets = np.cumsum([0, *structure.sizes])
        return [
            xp.reshape(xp.matrix_transpose(flat[a:b, :]), (k, *s))
            for a, b, s in zip(offsets, offsets[1:], structure.shapes)
        ]


class Whole(Layout):
    """A field without n (RLLC's law L (k,), MetaOptimize's β (m,), full TO's A (n, n)): one array."""

    def flat(self, stored, structure):
        return stored

    def store(self, name, value, structure, default):
        (array,), _ = as_arrays(name, [value], StateError, structure.ns)
        if tuple(array.shape) != tuple(default.shape):
            raise StateError(name, f"must have shape {tuple(default.shape)}, got {tuple(array.shape)}")
        return array


class DeviceScalar(Layout):
    """A real scalar kept on the device as a 0-d array of the working precision (a step size the step
    computes from device reductions, so that reading it would cost a host synchronisation)."""

    def flat(self, stored, structure):
        return stored

    def store(self, name, value, structure, default):
        return structure.ns.scalar(as_host_scalar(structure.ns, name, value, StateError))


PARAM, WHOLE, DEVICE_SCALAR = PerParameter(), Whole(), DeviceScalar()
COUNTER = _structured.Counter(lambda name, value, structure: _host(structure.ns, value))
HOST = _structured.HostScalar(lambda name, value, structure: _host(structure.ns, value))


# --------------------------------------------------------------------------- optimizers


class Optimizer(_structured.Optimizer):
    """Base of the array-API optimizers: the (F, G) contract of spec/formalism.md on parameter structures.

    Subclasses set ``algo`` and ``layouts`` (spec field → Layout) and implement ``initial_state`` (the
    stored S_0 of a structure), ``_F`` (the stored fields S_t changes, from S_{t-1}) and ``_G`` (the update,
    one array per parameter). ``check_F`` and ``check_G`` reject, before any work, what the state or
    observation makes invalid. ``step`` is F, then θ + G; ``_step`` may fuse the two into one pass.
    """

    backend = "array_api"

    def __init__(self, ns: Namespace, needs=frozenset({"grad"}), **hyperparameters):
        super().__init__(needs, hyperparameters)
        self.ns = ns

    # -- the contract -------------------------------------------------------------------

    def init(self, theta0, **initial_state) -> State:
        """S_0 for parameters ``theta0`` (a vector or a list of arrays); keyword arguments override any
        field, given flat as the spec shows it."""
        params, structure = as_arrays("theta0", theta0, StateError, self.ns)
        stored = self.overridden(self.initial_state(structure, params), initial_state, structure)
        return State(self.layouts, structure, stored)

    def F(self, state: State, obs) -> State:
        """S_t = F(S_{t-1}, obs_t), a new state."""
        step = self.check_observation(obs, state.structure)
        self.check_F(state, step)
        with self.ns.errors_ignored():
            return state.replace(**self._F(state, step))

    def G(self, state: State, obs):
        """θ_t − θ_{t-1} = G(S_t, obs_t), in the form the parameters were given."""
        step = self.check_observation(obs, state.structure)
        self.check_G(state)
        with self.ns.errors_ignored():
            return state.structure.as_given(self._G(state, step))

    def step(self, state: State, obs, params):
        """(S_t, θ_t): F, then θ_{t-1} + G(S_t, obs_t), for parameters in the form ``init`` was given; the
        observation and state are checked first, so a rejected step changes nothing."""
        step = self.check_observation(obs, state.structure)
        self.check_F(state, step)
        params, _ = as_arrays("params", params, ObservationError, self.ns, state.structure)
        with self.ns.errors_ignored():
            stored, new_params = self._step(state, step, params)
        return state.replace(**stored), state.structure.as_given(new_params)

    # -- hooks ----------------------------------------------------------------------------

    @abc.abstractmethod
    def initial_state(self, structure: Structure, params: list) -> dict:
        """The stored S_0."""

    @abc.abstractmethod
    def _F(self, state: State, step: StepInput) -> dict:
        """The stored fields of S_t that differ from S_{t-1} (new arrays; nothing written in place)."""

    @abc.abstractmethod
    def _G(self, state: State, step: StepInput) -> list:
        """The update, one array per parameter."""

    def _step(self, state: State, step: StepInput, params: list) -> tuple[dict, list]:
        """F and θ + G; algorithms override it to fuse the state update and θ's into one pass."""
        new = state.replace(**self._F(state, step))
        self.check_G(new)
        return new.stored, [p + d for p, d in zip(params, self._G(new, step))]

    def check_F(self, state: State, step: StepInput) -> None:  # noqa: B027 (most algorithms check nothing)
        """What makes F undefined on this state and observation, raised before any work."""

    def check_G(self, state: State) -> None:  # noqa: B027 (most algorithms check nothing)
        """What makes G undefined on this state (a step counter at 0 with a bias correction)."""

    # -- validation -----------------------------------------------------------------------

    def check_observation(self, obs, structure: Structure) -> StepInput:
        """The observation as a StepInput on ``structure``, or ``ObservationError`` naming the field."""
        self.check_needs(obs)
        grad, _ = as_arrays("grad", obs.grad, ObservationError, self.ns, structure)
        params = None
        if "params" in self.needs:
            params, _ = as_arrays("params", obs.params, ObservationError, self.ns, structure)
        loss = as_host_scalar(self.ns, "loss", obs.loss, ObservationError) if "loss" in self.needs else None

        def as_list(name, value):
            return as_arrays(name, value, ObservationError, self.ns, structure)[0]

        products = _structured.structured_products(obs, self.needs, structure, as_list)
        return StepInput(grad, params, loss, products.get("hvp"), products.get("third"))
