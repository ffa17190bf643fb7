"""The float32 conformance backend is the reference's own code at float32: every array it produces is
float32 (no float64 leaks); its host scalars (the loss, scalar state fields) stay Python floats
(spec/tolerances.md#float32)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stepspec import problems
from stepspec._core import observe
from stepspec.backends.reference import FLOAT32
from stepspec.conformance.catalog import CATALOG
from stepspec.conformance.harness import native_observation


@pytest.mark.parametrize("algo", sorted(CATALOG))
def test_float32_backend_keeps_every_array_in_float32(algo):
    info = CATALOG[algo]
    problem = problems.random_quadratic(3, condition=4.0, seed=0)
    shifted = problems.Shifted(problem, 10.0) if algo.startswith("elra") else problem  # a positive loss
    for sample in info.samples:
        optimizer = FLOAT32.algorithms[algo](**info.materialize(sample.hyperparameters, FLOAT32))
        theta = np.linspace(-1.0, 1.0, 3)
        s = optimizer.init(FLOAT32.asarray(theta))
        for t in range(1, 5):
            obs = native_observation(FLOAT32, observe(shifted, theta, optimizer.needs))
            s = optimizer.F(s, obs)
            delta = optimizer.G(s, obs)
            assert delta.dtype == np.float32, (sample.desc, t, "G", delta.dtype)
            for field in dataclasses.fields(s):
                value = getattr(s, field.name)
                if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                    assert value.dtype == np.float32, (sample.desc, t, field.name, value.dtype)
            theta = theta + delta.astype(np.float64)
