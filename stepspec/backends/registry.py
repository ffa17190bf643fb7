"""Resolve ``--backend`` (spec/conformance.md#backends), in this order:

1. a built-in name (``reference``, ``reference-float32``, the torch, jax and array-API backends, the peers of
   ``stepspec.backends.peers``);
2. an entry point in the group ``stepspec.backends`` declared by a third-party package;
3. ``module:attribute`` (``package.module:attribute``), an object or a zero-argument factory; the current
   directory is importable for this form, as it is for ``python -m``.

Every way a backend can fail to load or be invalid raises ``BackendError`` with one line naming the
backend and the cause; nothing else escapes ``resolve``. An alias (``torch.optim``) stands for several
backends; ``expand`` replaces it by them before anything is resolved.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Mapping
from importlib.metadata import entry_points

from . import peers
from .protocol import DTYPES, REQUIRED_ATTRIBUTES

BUILTIN = {
    "reference": "stepspec.backends.reference:BACKEND",
    "reference-float32": "stepspec.backends.reference:FLOAT32",
    "torch": "stepspec.backends.torch:BACKEND",
    "torch-float32": "stepspec.backends.torch:FLOAT32",
    "torch-cuda": "stepspec.backends.torch:cuda_backend",
    "torch-cuda-float32": "stepspec.backends.torch:cuda_float32_backend",
    "jax": "stepspec.backends.jax:BACKEND",
    "jax-float32": "stepspec.backends.jax:FLOAT32",
    "array-api-strict": "stepspec.backends.array_api:strict_backend",
    "array-api-strict-float32": "stepspec.backends.array_api:strict_float32_backend",
    "numpy-array-api": "stepspec.backends.array_api:numpy_backend",
    "numpy-array-api-float32": "stepspec.backends.array_api:numpy_float32_backend",
    "cupy": "stepspec.backends.array_api:cupy_backend",
    "cupy-float32": "stepspec.backends.array_api:cupy_float32_backend",
}
ENTRY_POINT_GROUP = "stepspec.backends"
ALIASES: dict[str, tuple[str, ...]] = dict(peers.ALIASES)
"""Alias → the backends it stands for (``torch.optim``: its for-loop, foreach and fused implementations)."""


class BackendError(ValueError):
    """A backend that cannot be loaded, or does not satisfy the protocol."""

    def __init__(self, name: str, cause: str):
        self.name, self.cause = name, cause
        super().__init__(f"backend {name!r} {cause}")


def available() -> list[str]:
    names = set(BUILTIN) | set(peers.BACKENDS) | set(ALIASES)
    return sorted(names | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def expand(names) -> list[str]:
    """``names`` with every alias replaced by the backends it stands for, in order, without repeats."""
    return list(dict.fromkeys(expanded for name in names for expanded in ALIASES.get(name, (name,))))


def _instantiate(obj):
    """An object with ``algorithms`` is the backend; otherwise a zero-argument factory of one."""
    return obj() if callable(obj) and not hasattr(obj, "algorithms") else obj


def _from_target(target: str):
    module_name, _, attribute = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else ():
        obj = getattr(obj, part)
    return _instantiate(obj)


def _cause(exc: BaseException) -> str:
    """'Type: message (file, line N)', the place being the innermost frame in the backend's own code."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename and f.filename != __file__
    ]
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _load(name: str):
    if name in BUILTIN:
        return _from_target(BUILTIN[name])
    if name in peers.BACKENDS:
        return peers.BACKENDS[name]()
    points = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if points:
        return _instantiate(points[0].load())
    if ":" not in name:
        raise BackendError(
            name, f"is unknown; available: {', '.join(available())}, or 'module:attribute' (an object in a module)"
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: a backend in a plain file here needs no packaging
    module_name = name.partition(":")[0]
    try:
        return _from_target(name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise BackendError(
                name,
                f"could not be loaded: no module named {exc.name!r} in the current directory ({os.getcwd()}) "
                "or on sys.path",
            ) from None
        raise


def resolve(name: str):
    """The validated backend object for ``name``, or ``BackendError``."""
    try:
        backend = _load(name)
    except BackendError:
        raise
    except Exception as exc:  # whatever the module raised at import or the factory at construction
        raise BackendError(name, f"could not be loaded: {_cause(exc)}") from None
    validate(name, backend)
    return backend


def validate(name: str, backend) -> None:
    """The protocol checks that can be made before any test runs (spec/conformance.md#backends)."""
    from ..reference import ALGORITHMS

    missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(backend, a)]
    if missing:
        raise BackendError(name, f"lacks {', '.join(missing)} (spec/conformance.md#backends)")
    if backend.dtype not in DTYPES:
        raise BackendError(name, f"has dtype {backend.dtype!r}; the tolerance policy knows {', '.join(DTYPES)}")
    for attribute in ("asarray", "to_numpy"):
        if not callable(getattr(backend, attribute)):
            raise BackendError(name, f"has a {attribute} that is not callable")
    if not isinstance(backend.algorithms, Mapping):
        raise BackendError(name, f"has algorithms of type {type(backend.algorithms).__name__}, not a mapping")
    if not backend.algorithms:
        raise BackendError(name, "provides no algorithms: there is nothing to test")
    unknown = sorted(str(a) for a in backend.algorithms if a not in ALGORITHMS)
    if unknown:
        raise BackendError(
            name, f"names algorithms stepspec does not specify: {', '.join(unknown)}; known: {', '.join(ALGORITHMS)}"
        )
    not_callable = sorted(a for a, constructor in backend.algorithms.items() if not callable(constructor))
    if not_callable:
        raise BackendError(name, f"has constructors that are not callable: {', '.join(not_callable)}")
