"""Generic: the backend exposes each algorithm under the spec's hyperparameter and state-field names
(spec/conformance.md#api)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from .. import spec
from .._core import OBSERVATION_FIELDS
from .assertions import Context, assert_holds
from .catalog import CATALOG
from .harness import construct, state_to_host

ALGORITHMS = list(CATALOG)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_hyperparameter_names_and_defaults(backend, record, algo):
    """The constructor takes exactly the spec's hyperparameters, with the spec's defaults."""
    ctx = Context(algo, "hyperparameter_names_and_defaults")
    signature = inspect.signature(backend.algorithms[algo])
    accepted = {name: p for name, p in signature.parameters.items() if p.kind != p.VAR_KEYWORD}
    declared = {h.name: h for h in spec.section(algo).hyperparameters}
    assert_holds(
        set(accepted) == set(declared),
        f"constructor parameters {sorted(accepted)} differ from the spec's {sorted(declared)}",
        ctx,
    )
    for name, h in declared.items():
        default = accepted[name].default
        if h.default == spec.REQUIRED:
            assert_holds(default is inspect.Parameter.empty, f"{name} must be required, has default {default!r}", ctx)
        elif h.default != spec.COMPUTED:
            assert_holds(
                default is not inspect.Parameter.empty and np.all(np.equal(default, h.default)),
                f"default of {name} is {default!r}, spec says {h.default!r}",
                ctx,
            )


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_state_fields(backend, record, algo):
    """S_0 exposes every state field of the spec with its declared shape (n = 3 here)."""
    ctx = Context(algo, "state_fields")
    info = CATALOG[algo]
    for sample in info.samples:
        optimizer = construct(backend, info, sample.hyperparameters)
        fields = state_to_host(backend, algo, optimizer.init(backend.asarray(np.zeros(3))))
        hp = sample.hyperparameters
        k = len(hp["a"]) if "a" in hp else len(hp.get("L0", ()))  # memory size, for the RLLC family
        expected = {"n": (3,), "k": (k,), "n × k": (3, k), "scalar int": ()}
        for f in spec.section(algo).state_fields:
            if f.shape in expected:
                shape = np.shape(fields[f.name])
                assert_holds(
                    shape == expected[f.shape],
                    f"state field {f.name} has shape {shape}, spec says {f.shape} = {expected[f.shape]}",
                    ctx,
                )


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_observation_needs(backend, record, algo):
    """``needs`` names Observation fields only and always includes grad (Def. 3.1)."""
    ctx = Context(algo, "observation_needs")
    info = CATALOG[algo]
    for sample in info.samples:
        needs = set(construct(backend, info, sample.hyperparameters).needs)
        assert_holds(
            "grad" in needs and needs <= set(OBSERVATION_FIELDS),
            f"needs {sorted(needs)} must contain grad and lie in {OBSERVATION_FIELDS}",
            ctx,
        )
