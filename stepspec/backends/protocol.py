"""The backend protocol of spec/conformance.md#backends: what an implementation must expose to be
run against the conformance suite. Deliberately small so third parties can adopt it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..conformance.tolerance import UNIT_ROUNDOFF


@runtime_checkable
class Backend(Protocol):
    """An implementation under test.

    ``algorithms`` maps spec algorithm ids (``"lm_rllc"``) to constructors that take the spec's
    hyperparameter names and host values (Python floats and tuples, NumPy arrays; a memory rule is
    a callable on the backend's own arrays). A constructed optimizer has ``needs`` (the Observation
    fields it reads) and ``init(theta0, **initial_state)``, ``F(state, obs)``, ``G(state, obs)`` on
    native arrays; its state exposes the spec's state fields as attributes. Bad input raises the
    classes of ``stepspec.errors``. An algorithm missing from ``algorithms`` is *absent*: its tests
    skip and the report counts it as absent, not failed. An optional ``device`` (default ``"cpu"``)
    is shown in the report.
    """

    name: str
    version: str
    dtype: str  # "float64" or "float32": the precision the tolerance policy assumes
    algorithms: Mapping[str, Callable[..., Any]]

    def asarray(self, x: np.ndarray) -> Any:
        """A host array as a native array: real floating input in the backend's working precision;
        complex, boolean and integer input kept in kind, so the suite can pass bad input through."""

    def to_numpy(self, x: Any) -> np.ndarray:
        """A native array (or scalar) as a host NumPy array."""


REQUIRED_ATTRIBUTES = ("name", "version", "dtype", "algorithms", "asarray", "to_numpy")
DTYPES = tuple(UNIT_ROUNDOFF)
"""The precisions the tolerance policy (spec/tolerances.md) has a unit roundoff for."""


def device_of(backend) -> str:
    return str(getattr(backend, "device", "cpu"))
