"""Implementations under test. ``reference`` wraps stepspec.reference; the torch, jax and cupy
backends implement the same protocol (``protocol.Backend``) independently."""

from .protocol import Backend
from .registry import available, resolve

__all__ = ["Backend", "available", "resolve"]
