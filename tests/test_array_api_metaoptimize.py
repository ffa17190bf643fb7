"""MetaOptimize in the array-API backend (stepspec/backends/array_api/metaoptimize.py), beyond the conformance
suite: block ids that cut across parameters (the suite draws scalar and weight-wise step sizes only), the
dense Q's flat view, the passes a step runs under cupy's kernel module, and the float32 constants."""

from __future__ import annotations

import numpy as np
import pytest

array_api_strict = pytest.importorskip("array_api_strict")
import array_api_compat.numpy as compat_numpy  # noqa: E402

from stepspec import Observation, reference  # noqa: E402
from stepspec.backends.array_api import ALGORITHMS  # noqa: E402
from stepspec.backends.array_api._core import Namespace  # noqa: E402
from stepspec.conformance.tolerance import tolerance  # noqa: E402
from stepspec.errors import StateError  # noqa: E402
from tests.test_array_api_backend import EmulatedKernels  # noqa: E402

SHAPES = [(3,), (2, 2)]
OFFSETS = np.cumsum([0, 3, 4])
CURVATURE = np.linspace(0.5, 2.0, 7)
CUBIC = np.linspace(-0.3, 0.3, 7)
BLOCKS = np.array([0, 1, 0, 2, 1, 2, 0])
"""f(θ) = Σ d_i (θ_i − 1)²/2 + e_i θ_i³/6 on two parameters (n = 7), three step-size blocks across them."""


def _gradient(x):
    return CURVATURE * (x - 1.0) + CUBIC * x**2 / 2


def _flat_observation(x, needs) -> Observation:
    """The observation at flat θ = x, in NumPy float64 (the reference's)."""
    return Observation(
        grad=_gradient(x),
        params=x.copy() if "params" in needs else None,
        hvp=(lambda u: (CURVATURE + CUBIC * x) * u) if "hvp" in needs else None,
        third=(lambda u, v: CUBIC * u * v) if "third" in needs else None,
    )


def _structured(ns: Namespace, flat_obs: Observation) -> Observation:
    def split(vector):
        return [
            ns.asarray(np.asarray(vector[a:b], ns.dtype).reshape(s)) for a, b, s in zip(OFFSETS, OFFSETS[1:], SHAPES)
        ]

    def join(parts):
        return np.concatenate([ns.to_numpy(p).reshape(-1) for p in parts]).astype(np.float64)

    def product(function):
        return None if function is None else (lambda *vectors: split(function(*(join(v) for v in vectors))))

    params = None if flat_obs.params is None else split(flat_obs.params)
    return Observation(
        grad=split(flat_obs.grad), params=params, hvp=product(flat_obs.hvp), third=product(flat_obs.third)
    )


CONFIGURATIONS = {
    "adamw-adam-2x2-exact": dict(base="adamw", meta="adam", approximation="2x2", hessian="exact", kappa=0.1),
    "sgdm-sgd-full-exact": dict(base="sgdm", meta="sgd", approximation="full", hessian="exact", gamma=0.9),
    "rmsprop-lion-full-free": dict(base="rmsprop", meta="lion", approximation="full", sigma="identity", eta=1e-4),
    "lion-sgd-2x2-diagonal-clipped": dict(base="lion", meta="sgd", hessian="diagonal", clip_decay=True),
    "sgd-sgd-L-diagonal-meta-first": dict(
        base="sgd", meta="sgd", approximation="L", hessian="diagonal", clip_decay=True, order="meta_first"
    ),
}
STEPS = 5


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_block_ids_across_parameters_follow_the_reference(name):
    """Block ids that mix the entries of two parameters: every state field, flat, and θ follow the reference's
    run on the concatenation (the per-parameter ``take`` of α, σ' and B's rows, and Hᵀg per column); the
    clipped Lion case has no ∂D/∂g, so IDBD's clipped factor is the number 1, never an array."""
    hp = dict(CONFIGURATIONS[name], alpha0=0.05, blocks=BLOCKS)
    hp.setdefault("eta", 0.01)
    ns = Namespace(array_api_strict, "float64")
    mine = ALGORITHMS["metaoptimize"](**hp, ns=ns)
    target = reference.ALGORITHMS["metaoptimize"](**hp)
    x = np.linspace(-1.0, 1.5, 7)
    theta = [ns.asarray(x[a:b].reshape(s)) for a, b, s in zip(OFFSETS, OFFSETS[1:], SHAPES)]
    state, expected = mine.init(theta), target.init(x)
    for _ in range(STEPS):
        flat_obs = _flat_observation(x, target.needs)
        expected = target.F(expected, flat_obs)
        x = x + target.G(expected, flat_obs)
        state, theta = mine.step(state, _structured(ns, _flat_observation(_join(ns, theta), mine.needs)), theta)
    bound = tolerance("float64", STEPS, 4.0)
    np.testing.assert_allclose(_join(ns, theta), x, rtol=bound, atol=bound)
    for field in ("beta", "alpha", "m", "v", "meta_m", "meta_v", "Y", "X", "Q", "delta"):
        got, want = ns.to_numpy(getattr(state, field)), np.asarray(getattr(expected, field))
        assert got.shape == want.shape, field
        np.testing.assert_allclose(
            got, want, rtol=bound, atol=bound * max(1.0, np.max(np.abs(want), initial=0)), err_msg=field
        )


def _join(ns, parts) -> np.ndarray:
    return np.concatenate([ns.to_numpy(p).reshape(-1) for p in parts]).astype(np.float64)


def test_traces_given_flat_are_shown_as_given():
    """``init`` overrides of X (3n × m) and Q (nm × m) with block ids across parameters come back unchanged in
    the flat view: the per-parameter columns of both layouts invert their flat form."""
    ns = Namespace(array_api_strict, "float64")
    optimizer = ALGORITHMS["metaoptimize"](
        base="sgd", meta="sgd", alpha0=0.1, blocks=BLOCKS, approximation="full", hessian="exact", ns=ns
    )
    rng = np.random.default_rng(1)
    X, Q = rng.standard_normal((21, 3)), rng.standard_normal((21, 3))
    theta = [ns.asarray(np.zeros(s)) for s in SHAPES]
    state = optimizer.init(theta, X=ns.asarray(X), Q=ns.asarray(Q))
    np.testing.assert_array_equal(ns.to_numpy(state.X), X)
    np.testing.assert_array_equal(ns.to_numpy(state.Q), Q)


@pytest.mark.parametrize(
    ("blocks", "approximation", "passes"),
    [("scalar", "2x2", 1), ("scalar", "full", 1), (BLOCKS, "2x2", 2), (BLOCKS, "full", 3)],
)
def test_under_cupy_a_step_is_one_pass_per_output_shape(blocks, approximation, passes):
    """Under cupy's kernel module a step runs per parameter one pass with scalar step sizes (the m = 1 columns
    share the weights' shape), else one per output shape: weights, the m columns, and (full) Q's m × m."""
    kernels = EmulatedKernels("float32")
    ns = Namespace(compat_numpy, "float32", kernels=kernels)
    optimizer = ALGORITHMS["metaoptimize"](
        base="adamw", meta="adam", alpha0=0.01, blocks=blocks, approximation=approximation, hessian="exact", ns=ns
    )
    x = np.linspace(-1.0, 1.5, 7)
    theta = [ns.asarray(x[a:b].reshape(s).astype(np.float32)) for a, b, s in zip(OFFSETS, OFFSETS[1:], SHAPES)]
    state = optimizer.init(theta)
    for _ in range(3):
        obs = _structured(ns, _flat_observation(_join(ns, theta), optimizer.needs))
        state, theta = optimizer.step(state, obs, theta)
    assert len(kernels.compiled) == passes
    assert kernels.calls == 3 * passes * len(SHAPES)


def test_float32_constants_are_derived_in_float64():
    """The torch backend's float32 decision: 1 − λ is formed in float64 on the host and rounded once, so the
    RMSprop base's first v' at g = 1 is float32(1 − λ) exactly — under cupy's kernel module too, where the
    pass computes in float32 (there float32(1) − float32(λ) differs from it by 1.3e-5 relative at λ = 0.999)."""
    lam = 0.999
    assert np.float32(1 - lam) != np.float32(1) - np.float32(lam)
    for ns in (
        Namespace(compat_numpy, "float32", kernels=EmulatedKernels("float32")),
        Namespace(array_api_strict, "float32"),
    ):
        optimizer = ALGORITHMS["metaoptimize"](base="rmsprop", meta="sgd", alpha0=0.01, lam=lam, ns=ns)
        theta = [ns.asarray(np.zeros(s, np.float32)) for s in SHAPES]
        ones = [ns.asarray(np.ones(s, np.float32)) for s in SHAPES]
        state = optimizer.F(optimizer.init(theta), Observation(grad=ones))
        np.testing.assert_array_equal(ns.to_numpy(state.v), np.full(7, np.float32(1 - lam)))


def _stored_entries(value) -> int:
    """The number of array entries a stored state field holds (lists of arrays nested any depth)."""
    if isinstance(value, (list, tuple)):
        return sum(_stored_entries(v) for v in value)
    return int(np.prod(value.shape, dtype=np.int64)) if hasattr(value, "shape") else 0


def test_weightwise_step_sizes_keep_linear_state():
    """Weight-wise step sizes (m = n) with the Hessian-free full approximation on n = 10⁵ weights: the row-sparse
    form stores per weight m, v, δ, h, x^m, x^v, q and per block β, α, m̄, v̄ and Y's three diagonals — 14n
    entries, before and after a step — where the dense X alone has 3n² (3·10¹⁰)."""
    n = 100_000
    ns = Namespace(compat_numpy, "float64")
    optimizer = ALGORITHMS["metaoptimize"](
        base="adamw", meta="adam", alpha0=0.01, blocks="weightwise", approximation="full", ns=ns
    )
    shapes = [(300, 300), (10_000,)]
    theta = [ns.asarray(np.full(s, 0.5)) for s in shapes]
    state = optimizer.init(theta)
    assert sum(_stored_entries(v) for v in state.stored.values()) <= 14 * n
    grad = [ns.asarray(np.linspace(-1.0, 1.0, int(np.prod(s))).reshape(s)) for s in shapes]
    state, theta = optimizer.step(state, Observation(grad=grad), theta)
    assert sum(_stored_entries(v) for v in state.stored.values()) <= 14 * n


ROW_SPARSE_ENTRIES = {"X": (0, 0), "Y": (4, 1), "Q": (2 * 7 + 3, 2)}
"""An entry on the row-sparse pattern of each trace, BLOCKS = [0, 1, 0, 2, 1, 2, 0]: H_{0, b(0) = 0}, Y^m̄'s
diagonal entry 1, and Q[(b(3), 3), b(3)] with b(3) = 2."""
OFF_PATTERN_ENTRIES = {"X": (14 + 1, 0), "Y": (0, 1), "Q": (0 * 7 + 1, 1)}
"""One off it: X^v_{1, 0} (b(1) = 1), Y^β_{0, 1}, and Q[(0, 1), 1] (row block 0 ≠ b(1))."""


@pytest.mark.parametrize("field", ["X", "Y", "Q"])
def test_row_sparse_traces_refuse_a_state_off_their_pattern(field):
    """hessian='free', block ids across parameters: an override on the row-sparse pattern comes back exactly in
    the flat view; one entry off it (no run reaches it, the form cannot hold it) is a StateError naming the
    field, as the torch backend raises it."""
    ns = Namespace(array_api_strict, "float64")
    optimizer = ALGORITHMS["metaoptimize"](
        base="sgd", meta="sgd", alpha0=0.1, blocks=BLOCKS, approximation="full", ns=ns
    )
    theta = [ns.asarray(np.zeros(s)) for s in SHAPES]
    flat = ns.to_numpy(getattr(optimizer.init(theta), field)).copy()
    flat[ROW_SPARSE_ENTRIES[field]] = 0.25
    rebuilt = optimizer.init(theta, **{field: ns.asarray(flat)})
    np.testing.assert_array_equal(ns.to_numpy(getattr(rebuilt, field)), flat)
    flat[OFF_PATTERN_ENTRIES[field]] = 0.5
    with pytest.raises(StateError) as raised:
        optimizer.init(theta, **{field: ns.asarray(flat)})
    assert raised.value.param == field


def test_block_sums_of_a_small_block_after_a_large_one_keep_their_digits_in_float32():
    """Block ids, float32: z = Σ h g per block is a difference of prefix sums over the weights sorted by block,
    accumulated in float64 — in float32 the prefix 2·10⁸ of block 0 absorbs block 1's 1 (float32's spacing there
    is 16), and β₁ = β₀ − η z would miss block 1's step."""
    ns = Namespace(array_api_strict, "float32")
    ids = np.array([0, 0, 1])
    optimizer = ALGORITHMS["metaoptimize"](
        base="sgd", meta="sgd", alpha0=0.01, eta=0.5, sigma="identity", blocks=ids, ns=ns
    )
    theta = ns.asarray(np.zeros(3, np.float32))
    X = np.zeros((9, 2), np.float32)
    X[[0, 1, 2], ids] = 1.0  # h = 1 at every weight
    state = optimizer.init(theta, X=ns.asarray(X))
    state = optimizer.F(state, Observation(grad=ns.asarray(np.array([1e8, 1e8, 1.0], np.float32))))
    np.testing.assert_allclose(ns.to_numpy(state.beta), [0.01 - 0.5 * 2e8, 0.01 - 0.5], rtol=1e-6)
