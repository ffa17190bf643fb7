"""Deliberately broken implementations, to show that each conformance property can fail
(spec/conformance.md#mutation-checks).

A source mutant changes one snippet (a sign, a constant, an index) in a copy of a stepspec module;
the copies of the reference modules are then re-executed against it, so the mutant backend runs
the broken code while the suite's expected values still come from the pristine reference. A
wrapper mutant breaks a contract a source change cannot (an F that updates its input in place).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

import stepspec._core
from stepspec import reference
from stepspec.backends.reference import ReferenceBackend

REFERENCE_MODULES = ("stepspec.reference.propagators",) + tuple(
    sorted({constructor.__module__ for constructor in reference.ALGORITHMS.values()})
)
SHARED_TYPES = ("Observation",)  # kept identical in copies, so the suite's observations are accepted


@dataclass(frozen=True)
class Kill:
    """A conformance test (module::function) that must fail on the mutant, with its parameters."""

    test: str
    params: dict = field(default_factory=dict)

    def __str__(self):
        args = ",".join(f"{k}={getattr(v, 'desc', v)}" for k, v in self.params.items())
        return f"{self.test}[{args}]" if args else self.test


@dataclass(frozen=True)
class SourceMutant:
    id: str
    module: str
    original: str
    mutant: str
    kills: tuple[Kill, ...]
    patch_module: bool = False  # host utilities: patch the module's attributes instead of a backend

    def source(self) -> str:
        return inspect.getsource(importlib.import_module(self.module))


@dataclass(frozen=True)
class WrapperMutant:
    id: str
    make_backend: object  # () -> backend
    kills: tuple[Kill, ...]


def _copy_module(name: str, source: str, replacements: dict) -> types.ModuleType:
    original = importlib.import_module(name)
    copy = types.ModuleType(name, original.__doc__)
    copy.__file__, copy.__package__ = original.__file__, original.__package__
    saved = {n: sys.modules.get(n) for n in replacements}
    try:
        sys.modules.update(replacements)
        exec(compile(source, f"<mutant of {original.__file__}>", "exec"), copy.__dict__)
    finally:
        for n, module in saved.items():
            sys.modules[n] = module
    for shared in SHARED_TYPES:
        if hasattr(original, shared):
            setattr(copy, shared, getattr(original, shared))
    return copy


def mutated_modules(m: SourceMutant) -> dict[str, types.ModuleType]:
    source = m.source()
    count = source.count(m.original)
    if count != 1:
        raise AssertionError(f"mutant {m.id}: {m.original!r} occurs {count} times in {m.module}, expected once")
    modules = {m.module: _copy_module(m.module, source.replace(m.original, m.mutant), {})}
    for name in REFERENCE_MODULES:
        if name not in modules:
            modules[name] = _copy_module(name, inspect.getsource(importlib.import_module(name)), modules)
    return modules


def mutant_backend(m: SourceMutant) -> ReferenceBackend:
    modules = mutated_modules(m)
    algorithms = {}
    for algo, constructor in reference.ALGORITHMS.items():
        algorithms[algo] = getattr(modules[constructor.__module__], constructor.__name__)
    return ReferenceBackend(algorithms, name=f"mutant:{m.id}")


@contextmanager
def patched(m: SourceMutant):
    """Swap the public functions of the original module for the mutant's while the block runs."""
    original = importlib.import_module(m.module)
    copy = mutated_modules(m)[m.module]
    names = [n for n, v in vars(copy).items() if callable(v) and not n.startswith("__")]
    saved = {n: getattr(original, n) for n in names}
    try:
        for n in names:
            setattr(original, n, getattr(copy, n))
        yield
    finally:
        for n, v in saved.items():
            setattr(original, n, v)


# --------------------------------------------------------------------------- wrapper mutants


class _Wrapped:
    def __init__(self, inner):
        self.inner, self.needs = inner, inner.needs

    def init(self, theta0, **initial_state):
        return self.inner.init(theta0, **initial_state)

    def F(self, s, obs):
        return self.inner.F(s, obs)

    def G(self, s, obs):
        return self.inner.G(s, obs)


class _InPlace(_Wrapped):
    """An F that updates the state it was given in place, decaying it before it looks at the
    observation — as a naive port of a torch.optim-style ``m.mul_(β).add_(g)`` would — so a rejected
    observation leaves the state half-updated."""

    def init(self, theta0, **initial_state):
        fields = stepspec._core.state_fields(self.inner.init(theta0, **initial_state))
        return SimpleNamespace(**{k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in fields.items()})

    def _frozen(self, s):
        return self.inner.State(**vars(s))

    def F(self, s, obs):
        for value in vars(s).values():
            if isinstance(value, np.ndarray):
                value *= 0.5
        new = self.inner.F(self._frozen(s), obs)
        for name, value in stepspec._core.state_fields(new).items():
            setattr(s, name, np.array(value) if isinstance(value, np.ndarray) else value)
        return s

    def G(self, s, obs):
        return self.inner.G(self._frozen(s), obs)


class _Noisy(_Wrapped):
    """A G with run-to-run noise at the 1e-9 level, as an unseeded stochastic rounding would give."""

    def G(self, s, obs):
        delta = self.inner.G(s, obs)
        return delta + 1e-9 * np.random.default_rng().standard_normal(delta.shape)


def wrapper_backend(wrapper: type, name: str) -> ReferenceBackend:
    return ReferenceBackend(
        {
            algo: (lambda c: lambda *a, **k: wrapper(c(*a, **k)))(constructor)
            for algo, constructor in reference.ALGORITHMS.items()
        },
        name=f"mutant:{name}",
    )


class _Structured(_Wrapped):
    """The reference over parameter structures (spec/conformance.md#structures): θ_0, the gradients, the
    parameters and the curvature products are flattened in order, G is split back into the shapes. With
    ``gradient_order="F"`` the gradients of matrices are flattened column by column while everything else
    is row by row: a port that mixes the two layouts."""

    gradient_order = "C"

    def _flat(self, parts, order="C"):
        return np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, order=order) for p in parts])

    def _split(self, vector):
        offsets = np.cumsum([0, *(int(np.prod(s, dtype=int)) for s in self.shapes)])
        return [vector[a:b].reshape(s) for a, b, s in zip(offsets, offsets[1:], self.shapes)]

    def _observation(self, obs):
        def product(function):
            return None if function is None else (lambda *v: self._flat(function(*(self._split(x) for x in v))))

        return dataclasses.replace(
            obs,
            grad=self._flat(obs.grad, self.gradient_order),
            params=None if obs.params is None else self._flat(obs.params),
            hvp=product(obs.hvp),
            third=product(obs.third),
        )

    def init(self, theta0, **initial_state):
        self.shapes = [np.shape(p) for p in theta0]
        return self.inner.init(self._flat(theta0), **initial_state)

    def F(self, s, obs):
        return self.inner.F(s, self._observation(obs))

    def G(self, s, obs):
        return self._split(self.inner.G(s, self._observation(obs)))


class _StructuredMixedOrder(_Structured):
    gradient_order = "F"


def structured_backend(wrapper: type = _Structured, name: str = "structured-reference") -> ReferenceBackend:
    """The reference behind ``wrapper``, declaring structured support."""
    backend = wrapper_backend(wrapper, name)
    backend.structured = True
    return backend
