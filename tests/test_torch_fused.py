"""The torch backend's fast path (stepspec/backends/torch/_fused.py, spec/backends.md#compiled) against the
reference, run as the drop-in optimizers run it: in place, on a structure of tensors of every kind the
compiled pass meets — matrices and vectors, a 0-d, an empty, a one-element and a non-contiguous tensor.

Every kernel runs uncompiled (its math and the dispatch) in float64 and float32; one kernel also runs
compiled. ``STEPSPEC_COMPILE_ALL=1`` compiles every kernel in both precisions (about two minutes on
2 cores with an empty compilation cache)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepspec import Observation, ObservationError
from stepspec import problems as P
from stepspec._core import observe
from stepspec.conformance.assertions import Context, Record, assert_series_close
from stepspec.conformance.catalog import CATALOG
from stepspec.conformance.harness import numeric_fields, perturbation_growth, reference_run, step_sensitivities
from stepspec.conformance.strategies import vectors
from stepspec.conformance.tolerance import tolerance

torch = pytest.importorskip("torch")
from stepspec.backends.torch import ALGORITHMS, DTYPES, _fused  # noqa: E402
from stepspec.errors import HyperparameterError  # noqa: E402

STEPS = 6
SHAPES = [(2, 3), (), (5,), (0,), (1,), (3, 2), (4,)]
TRANSPOSED = 5  # SHAPES[5] is stored transposed: not contiguous, so it runs eagerly
PROBLEM = P.random_quadratic(sum(int(np.prod(s)) for s in SHAPES), condition=4.0, seed=2)
CASES = [
    ("diagonal_to", {"lr": 0.1, "lr_a": 0.05}),
    ("diagonal_to", {"lr": 0.1, "lr_a": 0.02, "lr_b": 0.2, "lr_decay": 0.9, "lr_opt_decay": 0.8}),
    ("diagonal_to", {"lr": 0.1, "lr_a": 0.05, "radius": 2.0}),  # the projection: the eager step
    ("rank_one_to", {"lr": 0.1, "lr_uv": 0.05}),
    ("rank_one_to", {"lr": 0.1, "lr_uv": 0.02, "lr_b": 0.2, "lr_decay": 0.9, "lr_opt_decay": 0.8}),
    ("metaoptimize", {"base": "adamw", "meta": "lion", "alpha0": 0.05, "eta": 0.01}),  # the benchmark's
    ("metaoptimize", {"base": "sgd", "meta": "adam", "alpha0": 0.05, "eta": 0.01, "gamma": 0.9, "kappa": 0.1}),
    ("metaoptimize", {"base": "sgdm", "meta": "sgd", "alpha0": 0.05, "sigma": "identity", "order": "meta_first"}),
    ("metaoptimize", {"base": "rmsprop", "meta": "rmsprop", "alpha0": 0.01, "eta": 0.01, "approximation": "L"}),
    ("metaoptimize", {"base": "lion", "meta": "fixed", "alpha0": 0.01, "kappa": 0.1, "order": "meta_first"}),
    ("metaoptimize", {"base": "adamw", "meta": "adam", "alpha0": 0.05, "eta": 0.01, "kappa": 0.1, "gamma": 0.5}),
    ("metaoptimize", {"base": "adamw", "meta": "lion", "alpha0": 0.05, "blocks": "weightwise"}),  # eager
    ("sgd", {"lr": 0.1}),
    ("momentum", {"lr": 0.05}),
    ("nag", {"lr": 0.05}),
    ("adam", {"lr": 0.05}),
    ("adam", {"lr": 0.05, "weight_decay": 0.1}),
    ("adamw", {"lr": 0.05}),
    ("rmsprop", {"lr": 0.01}),
    ("rmsprop", {"lr": 0.01, "weight_decay": 0.1}),
    ("lion", {"lr": 0.01}),
    ("lion", {"lr": 0.01, "weight_decay": 0.1}),
    # M_2(0), M = [g_t, g_{t−1}]: from M_0 = 0, a propagator with two non-zero a_i starts from a rank-1 memory,
    # whose float32 round-off flips (R3c)'s cut, and a slowly turning gradient makes κ(M)² ~ 1e5: unresolvable
    ("lm_rllc", {"B": [[0.0, 1.0], [0.0, 0.0]], "a": [1.0, 0.0], "c1": 0.4, "c2": 0.1}),
    ("linear_memory", {"B": [[0.6, -0.3, 0], [0.3, 0.6, 0], [0, 0, 0.3]], "a": [1.0, 0, 1.0], "L": [0.05, 0.02, 0.03]}),
    ("elra", {"lr": 5.0, "max_ratio": 10.0, "weight_decay": 0.99}),  # a retrace at t = 2
    ("elra", {"lr": 5.0, "max_ratio": 10.0, "retrace": False, "batch_control": True, "gradient_decay": True}),
    ("elra", {"convention": "authors_code", "lr": 2.0}),  # a retrace at t = 2, on NONNEGATIVE
    ("elra_lean", {"lr": 5.0, "max_ratio": 10.0, "weight_decay": 0.99}),
    ("elra_lean", {"lr": 5.0, "max_ratio": 10.0, "retrace": False, "batch_control": True, "gradient_decay": True}),
]
NONNEGATIVE = P.random_least_squares(2 * PROBLEM.n, PROBLEM.n, seed=3)
"""A loss f ≥ 0, for ELRA's convention='authors_code', which takes √ of it."""
COMPILED_BY_DEFAULT = ("adamw", "float32")
EVERY_COMPILATION = os.environ.get("STEPSPEC_COMPILE_ALL") == "1"


def structure(vector: np.ndarray, dtype: str) -> list:
    """``vector`` as tensors of SHAPES, the TRANSPOSED one a non-contiguous view."""
    parts, offset = [], 0
    for i, shape in enumerate(SHAPES):
        size = int(np.prod(shape))
        part = torch.tensor(vector[offset : offset + size].reshape(shape), dtype=DTYPES[dtype])
        parts.append(part.t().contiguous().t() if i == TRANSPOSED else part)
        offset += size
    assert not parts[TRANSPOSED].is_contiguous()
    return parts


def joined(parts) -> np.ndarray:
    return np.concatenate([p.detach().double().numpy().reshape(-1) for p in parts])


def problem_for(hyperparameters):
    return NONNEGATIVE if hyperparameters.get("convention") == "authors_code" else PROBLEM


def fast_run(algo, hyperparameters, theta0, dtype, compile, initial_state=None):
    """θ_0 … θ_T and the states' fields, stepping in place with ``_fused.step_``."""
    optimizer = ALGORITHMS[algo](**hyperparameters, dtype=DTYPES[dtype])
    params = structure(theta0, dtype)
    state = optimizer.init(params, **(initial_state or {}))
    thetas, states = [theta0.copy()], [state.clone().fields()]  # clones: a step overwrites the state's tensors
    for _ in range(STEPS):
        host = observe(problem_for(hyperparameters), thetas[-1], optimizer.needs)
        obs = Observation(
            grad=structure(host.grad, dtype), params=params if host.params is not None else None, loss=host.loss
        )
        _fused.step_(optimizer, state, obs, params, compile=compile)
        thetas.append(joined(params))
        states.append(state.clone().fields())
    return thetas, states


def _host(value):
    return value.double().numpy() if isinstance(value, torch.Tensor) else value


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "algo, hyperparameters", CASES, ids=[f"{a}-{'-'.join(map(str, h.values()))}" for a, h in CASES]
)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_fast_path_equals_the_reference(algo, hyperparameters, dtype, compile, data):
    if compile and (algo, dtype) != COMPILED_BY_DEFAULT and not EVERY_COMPILATION:
        pytest.skip("compiling every kernel takes minutes: STEPSPEC_COMPILE_ALL=1")
    assert_equals_the_reference(algo, hyperparameters, dtype, compile, data.draw(vectors(PROBLEM.n), label="theta0"))


def assert_equals_the_reference(algo, hyperparameters, dtype, compile, theta0, initial_state=None):
    ref = reference_run(algo, hyperparameters, problem_for(hyperparameters), theta0, STEPS, initial_state)
    thetas, states = fast_run(algo, hyperparameters, theta0, dtype, compile, initial_state)
    kappa = max(max(CATALOG[algo].step_conditioning(s) for s in ref.states), *step_sensitivities(ref, dtype))
    tol = tolerance(dtype, STEPS, kappa * perturbation_growth(ref, dtype))
    ctx, record = Context(algo, "fast_path", {**hyperparameters, "compile": compile}), Record()
    assert_series_close(thetas, ref.thetas, tol=tol, what="theta", ctx=ctx, record=record)
    for name in numeric_fields(ref.states[0]):
        mine = [_host(s[name]) for s in states]
        assert_series_close(mine, [s[name] for s in ref.states], tol=tol, what=f"state.{name}", ctx=ctx, record=record)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_metaoptimize_from_non_zero_traces(dtype, compile, data):
    """x^m and x^v off zero (an ``init`` override; a run from X_0 = 0 keeps them zero, and the pass then leaves
    them out): the pass reads and writes them."""
    if compile and not EVERY_COMPILATION:
        pytest.skip("compiling every kernel takes minutes: STEPSPEC_COMPILE_ALL=1")
    hyperparameters = {"base": "adamw", "meta": "adam", "alpha0": 0.05, "eta": 0.01, "kappa": 0.1}
    theta0 = data.draw(vectors(PROBLEM.n), label="theta0")
    traces = np.concatenate([np.zeros(PROBLEM.n), data.draw(vectors(2 * PROBLEM.n, 0.1), label="x^m, x^v")])
    assert_equals_the_reference("metaoptimize", hyperparameters, dtype, compile, theta0, {"X": traces[:, None]})


def test_a_rejected_step_changes_nothing():
    """A NaN in the third of five gradient tensors: ObservationError, before the step counter or any tensor moves."""
    optimizer = ALGORITHMS["adam"](lr=0.1, dtype=torch.float32)
    params = [torch.randn(4) for _ in range(5)]
    state = optimizer.init(params)
    _fused.step_(optimizer, state, Observation(grad=[torch.randn(4) for _ in range(5)]), params, compile=False)
    before = [p.clone() for p in params], state.clone().fields()
    grads = [torch.randn(4) for _ in range(5)]
    grads[2][1] = float("nan")
    with pytest.raises(ObservationError) as raised:
        _fused.step_(optimizer, state, Observation(grad=grads), params, compile=False)
    assert raised.value.param == "grad"
    assert all(torch.equal(a, b) for a, b in zip(params, before[0]))
    assert state.fields()["step"] == before[1]["step"] == 1
    assert all(torch.equal(state.fields()[k], before[1][k]) for k in ("m", "v"))


@pytest.mark.parametrize("failure", _fused.COMPILE_FAILURES)
def test_a_pass_that_fails_to_compile_finishes_the_step_eagerly(monkeypatch, failure):
    """The first chunk's compilation fails (no compiler; the recompile limit reached under fullgraph): one
    warning, every tensor stepped (as the eager kernel steps it), and ``auto`` no longer compiles that kernel."""
    monkeypatch.setattr(_fused, "_uncompilable", set())
    monkeypatch.setattr(_fused, "CHUNK", 2)

    def failing(update):
        def run(*args):
            raise failure("no C++ compiler")

        return run

    monkeypatch.setattr(_fused, "compiled", failing)
    optimizer = ALGORITHMS["momentum"](lr=0.1, dtype=torch.float64)
    params = [torch.randn(3) for _ in range(5)]
    expected = [p.clone() for p in params]
    grads = [torch.randn(3) for _ in range(5)]
    _fused.step_(optimizer, optimizer.init(expected), Observation(grad=grads), expected, compile=False)
    state = optimizer.init(params)
    with pytest.warns(UserWarning, match="torch.compile failed for _momentum"):
        _fused.step_(optimizer, state, Observation(grad=grads), params, compile=True)
    assert all(torch.equal(a, b) for a, b in zip(params, expected))
    assert not _fused.use_compiled("auto", optimizer, LARGE)


def test_a_reduction_that_fails_to_compile_runs_eagerly(monkeypatch):
    """LM-RLLC's reduction round and pass both fail to compile: one warning each, and the step equals the
    uncompiled fast path's."""
    monkeypatch.setattr(_fused, "_uncompilable", set())

    def failing(function):
        def run(*args):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler")

        return run

    monkeypatch.setattr(_fused, "compiled", failing)
    monkeypatch.setattr(_fused, "compiled_sums", failing)
    optimizer = ALGORITHMS["lm_rllc"](B=[[0.9, 0.0], [0.0, 0.0]], a=[1.0, 1.0], c2=0.5, dtype=torch.float64)
    params = [torch.randn(3) for _ in range(2)]
    expected = [p.clone() for p in params]
    grads = [[torch.randn(3) for _ in range(2)] for _ in range(2)]
    state, expected_state = optimizer.init(params), optimizer.init(expected)
    for g in grads:
        _fused.step_(optimizer, expected_state, Observation(grad=g), expected, compile=False)
    with pytest.warns(UserWarning) as warned:
        for g in grads:
            _fused.step_(optimizer, state, Observation(grad=g), params, compile=True)
    assert sorted(str(w.message).split(";")[0] for w in warned) == [
        "torch.compile failed for _gram_row",
        "torch.compile failed for _memory_pass",
    ]
    assert all(torch.equal(a, b) for a, b in zip(params, expected))
    assert torch.equal(state.L, expected_state.L)


LARGE = SimpleNamespace(n=_fused.AUTO_MIN_PARAMETERS)  # a structure as use_compiled reads it


def test_auto_compiles_large_structures_only():
    optimizer = ALGORITHMS["rmsprop"](dtype=torch.float32)
    assert _fused.use_compiled("auto", optimizer, LARGE)
    small = optimizer.init([torch.zeros(10)]).structure
    assert not _fused.use_compiled("auto", optimizer, small)
    assert _fused.use_compiled(True, optimizer, small) and not _fused.use_compiled(False, optimizer, LARGE)
    with pytest.raises(HyperparameterError) as raised:
        _fused.use_compiled("yes", optimizer, small)
    assert raised.value.param == "compile"


def test_a_configuration_without_kernel_is_never_compiled():
    """MetaOptimize's kernel is Hessian-free with scalar step sizes, TO's without a projection
    (``Kernel.applies``): other configurations take the eager step whatever ``compile`` says."""
    for algo, hyperparameters in [
        ("metaoptimize", {"base": "adamw", "meta": "lion", "alpha0": 0.01, "blocks": "weightwise"}),
        ("metaoptimize", {"base": "adamw", "meta": "lion", "alpha0": 0.01, "hessian": "diagonal"}),
        ("diagonal_to", {"lr": 0.1, "lr_a": 0.05, "radius": 1.0}),
    ]:
        assert not _fused.use_compiled(True, ALGORITHMS[algo](**hyperparameters), LARGE)
        assert not _fused.use_compiled("auto", ALGORITHMS[algo](**hyperparameters), LARGE)
    assert _fused.use_compiled(True, ALGORITHMS["metaoptimize"](base="adamw", meta="lion", alpha0=0.01), LARGE)


@pytest.mark.parametrize("algo", ["sgd", "momentum", "nag", "adam", "adamw"])
def test_auto_keeps_torchs_own_fused_kernel(algo):
    """Where the in-place step is torch's fused kernel, ``auto`` does not compile; ``True`` still does."""
    optimizer = ALGORITHMS[algo](lr=0.1, dtype=torch.float32)
    assert not _fused.use_compiled("auto", optimizer, LARGE) and _fused.use_compiled(True, optimizer, LARGE)
