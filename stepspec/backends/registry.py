"""Resolve ``--backend`` (spec/conformance.md#backends), in this order:

1. a built-in name (``reference``);
2. an entry point in the group ``stepspec.backends`` declared by a third-party package;
3. ``package.module:attribute``, an object or a zero-argument factory.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .protocol import REQUIRED_ATTRIBUTES

BUILTIN = {"reference": "stepspec.backends.reference:BACKEND"}
ENTRY_POINT_GROUP = "stepspec.backends"


def _load(target: str):
    module_name, _, attribute = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else ():
        obj = getattr(obj, part)
    return obj() if callable(obj) and not hasattr(obj, "algorithms") else obj


def available() -> list[str]:
    return sorted(set(BUILTIN) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def resolve(name: str):
    """The backend object for ``name``; ``ValueError`` naming the choices when unknown or malformed."""
    if name in BUILTIN:
        backend = _load(BUILTIN[name])
    else:
        points = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if points:
            backend = points[0].load()
            backend = backend() if callable(backend) and not hasattr(backend, "algorithms") else backend
        elif ":" in name:
            try:
                backend = _load(name)
            except (ImportError, AttributeError) as exc:
                raise ValueError(f"backend {name!r} could not be loaded: {exc}") from exc
        else:
            raise ValueError(
                f"unknown backend {name!r}; available: {', '.join(available())}, or 'package.module:attribute'"
            )
    missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(backend, a)]
    if missing:
        raise ValueError(f"backend {name!r} lacks {missing} (spec/conformance.md#backends)")
    return backend
