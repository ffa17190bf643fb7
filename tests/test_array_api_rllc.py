"""The array-API RLLC family's own behaviour (spec/rllc.md#backends, spec/backends.md#array-api): the law step's
float64 Gram matrix and rank cut in both precisions, the law kept in the working precision, a step that reads
nothing back to the host, ``step`` as F then θ + G, and the memory rule's errors with the state untouched."""

from __future__ import annotations

import numpy as np
import pytest

array_api_strict = pytest.importorskip("array_api_strict")
array_api_compat = pytest.importorskip("array_api_compat")
import array_api_compat.numpy as compat_numpy  # noqa: E402

from stepspec import Observation  # noqa: E402
from stepspec.backends.array_api import _core, rllc  # noqa: E402
from stepspec.backends.array_api._core import Namespace  # noqa: E402
from stepspec.conformance.tolerance import tolerance  # noqa: E402
from stepspec.errors import HyperparameterError  # noqa: E402

NAG_B, NAG_A = np.diag([0.9, 0.0]), np.array([1.0, 1.0])
SKEW_B, SKEW_A = np.diag([0.9, 0.5]), np.array([1.0, 0.3])
"""A propagator whose rank-one memory g aᵀ has columns that are not copies of each other: its Gram matrix is
singular only up to round-off."""
MIXING_B, MIXING_A = np.array([[0.5, 0.3], [-0.2, 0.4]]), np.array([1.0, -0.5])
"""A propagator whose units read each other (B off-diagonal), so the memory pass mixes units."""
SHAPES = [(3,), (2, 2), (), (0,), (1, 3)]


def _strict(dtype: str) -> Namespace:
    return Namespace(array_api_strict, dtype)


def _held(ns: Namespace, values: np.ndarray) -> np.ndarray:
    """The float64 values of ``values`` once held in the namespace's precision."""
    return np.asarray(values, dtype=ns.dtype).astype(np.float64)


def _F(optimizer, ns: Namespace, state, grad: np.ndarray):
    return optimizer.F(state, Observation(grad=ns.asarray(np.asarray(grad, dtype=ns.dtype))))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [6, 1000, 100_000])
@pytest.mark.parametrize("eps", [0.0, 1e-8])
@pytest.mark.parametrize("seed", range(4))
def test_a_rank_one_memory_takes_the_minimum_norm_step(dtype, n, eps, seed):
    """M_1 = g_1 aᵀ has rank 1 (k = 2): the Gram matrix's second eigenvalue is round-off and must count as zero
    (R3c), leaving the closed form M_ε⁺g_2 = a ⟨g_1, g_2⟩/(σ² + ε), σ² = ‖a‖²‖g_1‖². A Gram matrix accumulated
    in float32, or a float64 one without the √(max(n, k)·2⁻⁵²) cut, keeps the round-off eigenvalue (about
    u·λ_max, positive for some seeds) and inverts it: the law step is then O(1) wrong."""
    ns = _strict(dtype)
    rng = np.random.default_rng([n, seed])
    g1, g2 = _held(ns, rng.standard_normal(n)), _held(ns, rng.standard_normal(n))
    c2, L0 = 0.5, np.array([0.3, -0.2])
    optimizer = rllc.lm_rllc(SKEW_B, SKEW_A, c1=0.1, c2=c2, L0=L0, eps=eps, ns=ns)
    state = _F(optimizer, ns, optimizer.init(ns.zeros((n,))), g1)
    np.testing.assert_array_equal(ns.to_numpy(state.L), L0.astype(dtype))  # M_0⁺ = 0
    state = _F(optimizer, ns, state, g2)
    sigma2 = (SKEW_A @ SKEW_A) * (g1 @ g1)
    expected_step = SKEW_A * (g1 @ g2) / (sigma2 + eps)
    scale = np.linalg.norm(g2) / np.sqrt(sigma2)  # ‖g‖/σ_min, the natural scale of M⁺g (spec/tolerances.md)
    deviation = np.max(np.abs((ns.to_numpy(state.L).astype(np.float64) - L0) / c2 - expected_step)) / scale
    assert deviation <= tolerance(dtype, 0, 1.0), deviation


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [6, 1000, 200_000])
@pytest.mark.parametrize("sigma_ratio", [0.1, 1e-3])
def test_a_full_rank_memory_is_inverted_to_the_policy(dtype, n, sigma_ratio):
    """A rank-2 memory with σ_2/σ_1 = ``sigma_ratio`` keeps both directions, and M⁺g is the least-squares
    solution within K·u·κ(M)², in float32 at n = 2·10⁵ too: the eigenvalue cut max(n, k)·2⁻⁵²·σ_1² is float64's,
    the precision the Gram matrix is held in; at the working precision's u it would drop σ_2² = 10⁻⁶ σ_1²
    (float32, n = 2·10⁵: 2.4·10⁻² σ_1²) and the law step would lose a direction."""
    ns = _strict(dtype)
    rng = np.random.default_rng(n)
    U, _ = np.linalg.qr(rng.standard_normal((n, 2)))
    V, _ = np.linalg.qr(rng.standard_normal((2, 2)))
    M = _held(ns, (U * [1.0, sigma_ratio]) @ V.T)
    g = _held(ns, rng.standard_normal(n))
    optimizer = rllc.lm_rllc(NAG_B, NAG_A, c1=0.1, c2=1.0, L0=np.zeros(2), eps=0.0, ns=ns)
    state = _F(optimizer, ns, optimizer.init(ns.zeros((n,)), M=ns.asarray(M.astype(dtype))), g)
    sigma = np.linalg.svd(M, compute_uv=False)
    expected = np.linalg.lstsq(M, g, rcond=None)[0]
    deviation = np.max(np.abs(ns.to_numpy(state.L).astype(np.float64) - expected)) / (np.linalg.norm(g) / sigma[-1])
    assert deviation <= tolerance(dtype, 0, (sigma[0] / sigma[-1]) ** 2), deviation


@pytest.mark.parametrize("algo", ["lm_rllc", "rllc"])
def test_the_law_stays_in_the_working_precision(algo):
    """The law step is solved in float64; L_t is stored in float32 all the same, so the learning pass's
    weights −c1 L_t[j] are float32 scalars (a float64 one would make a cupy kernel compute in float64)."""
    ns = _strict("float32")
    optimizer = _optimizer(algo, ns)
    theta = [ns.zeros(s) for s in SHAPES]
    state = optimizer.init(theta)
    for seed in range(3):
        state, theta = optimizer.step(state, _observation(ns, seed), theta)
    assert state.stored["L"].dtype == array_api_strict.float32
    assert all(p.dtype == array_api_strict.float32 for p in theta)


def _halving_rule(M, H, g):
    xp = array_api_compat.array_namespace(M)
    return 0.5 * M + g[:, None] * xp.asarray([1.0, -0.5], dtype=M.dtype), H + 1.0


def _optimizer(algo: str, ns: Namespace):
    if algo == "rllc":
        return rllc.rllc(_halving_rule, c1=0.1, c2=0.05, L0=[0.1, 0.2], H0=0.0, ns=ns)
    if algo == "lm_rllc":
        return rllc.lm_rllc(MIXING_B, MIXING_A, c1=0.1, c2=0.05, L0=[0.1, 0.2], ns=ns)
    return rllc.linear_memory(MIXING_B, MIXING_A, L=[0.1, 0.2], ns=ns)


def _observation(ns: Namespace, seed: int) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(grad=[ns.asarray(rng.standard_normal(s).astype(ns.dtype)) for s in SHAPES])


@pytest.mark.parametrize("algo", ["lm_rllc", "linear_memory"])
def test_a_step_reads_nothing_back_to_the_host(algo, monkeypatch):
    """lm_rllc's and linear_memory's steps, the k×k solve included, stay on the device: with the core's finite
    checks (the step's only host reads) switched off, an array that refuses every host conversion goes
    through a run of steps."""
    ns = _strict("float64")
    optimizer = _optimizer(algo, ns)
    theta = [ns.asarray(np.full(s, 0.5)) for s in SHAPES]
    state = optimizer.init(theta)
    observations = [_observation(ns, seed) for seed in range(3)]

    def refused(*args, **kwargs):
        raise AssertionError("a host read in the step")

    monkeypatch.setattr(_core, "all_finite", lambda ns, arrays: True)
    for method in ("__bool__", "__float__", "__int__", "__index__", "__complex__", "__array__", "__dlpack__"):
        monkeypatch.setattr(ns.array_type, method, refused)
    for obs in observations:
        state, theta = optimizer.step(state, obs, theta)
    monkeypatch.undo()
    assert np.all(np.isfinite(np.concatenate([ns.to_numpy(p).reshape(-1) for p in theta])))


@pytest.mark.parametrize("algo", ["lm_rllc", "linear_memory", "rllc"])
def test_step_is_F_then_G_bit_for_bit(algo):
    """``step`` fuses the learning step with θ's update and computes θ + (Σ_j w_j m_j), the sum G returns, so
    a run of ``step`` equals F then θ + G exactly on NumPy-backed namespaces (a pass that accumulates into θ
    unit by unit rounds differently)."""
    ns = Namespace(compat_numpy, "float64")
    optimizer = _optimizer(algo, ns)
    fused = [ns.asarray(np.full(s, 0.5)) for s in SHAPES]
    separate = list(fused)
    fused_state = separate_state = optimizer.init(fused)
    for seed in range(4):
        obs = _observation(ns, seed)
        fused_state, fused = optimizer.step(fused_state, obs, fused)
        separate_state = optimizer.F(separate_state, obs)
        separate = [p + d for p, d in zip(separate, optimizer.G(separate_state, obs))]
    for a, b in zip(fused, separate):
        np.testing.assert_array_equal(ns.to_numpy(a), ns.to_numpy(b))
    np.testing.assert_array_equal(ns.to_numpy(fused_state.M), ns.to_numpy(separate_state.M))


def test_the_rule_sees_the_flat_memory_and_gradient_as_namespace_arrays():
    """Def. 3.2's U(M, H, g) takes the flat (n, k) memory and (n,) gradient: arrays of the namespace, joined
    from the parameters in order; its M' is split back the same way (a halving rule plus g aᵀ)."""
    ns = _strict("float64")
    seen = []

    def rule(M, H, g):
        seen.append((type(M), tuple(M.shape), type(g), tuple(g.shape), ns.to_numpy(M).copy(), ns.to_numpy(g).copy()))
        return _halving_rule(M, H, g)

    optimizer = rllc.rllc(rule, c1=0.1, c2=0.05, L0=[0.1, 0.2], H0=0.0, ns=ns)
    state = optimizer.init([ns.zeros(s) for s in SHAPES])
    grads = []
    for seed in range(2):
        obs = _observation(ns, seed)
        grads.append(np.concatenate([ns.to_numpy(g).reshape(-1) for g in obs.grad]))
        state = optimizer.F(state, obs)
    n = sum(int(np.prod(s)) for s in SHAPES)
    assert [s[:4] for s in seen] == [(ns.array_type, (n, 2), ns.array_type, (n,))] * 2
    np.testing.assert_array_equal(seen[1][4], np.outer(grads[0], [1.0, -0.5]))  # M_1 = g_1 (1, −0.5)ᵀ
    np.testing.assert_array_equal(seen[1][5], grads[1])
    np.testing.assert_array_equal(ns.to_numpy(state.M), 0.5 * seen[1][4] + np.outer(grads[1], [1.0, -0.5]))
    assert state.stored["H"] == 2.0


def _host(ns: Namespace, value) -> np.ndarray:
    """A state field as a host copy (H is a host float)."""
    return ns.to_numpy(value).copy() if hasattr(value, "shape") else np.asarray(value)


def _nan_after_first(M, H, g):
    M2, H2 = _halving_rule(M, H, g)
    return (M2 * float("nan") if H >= 1.0 else M2), H2


def _wrong_shape(M, H, g):
    return M[:, :1], H + 1.0


def _not_an_array(M, H, g):
    return [[0.0, 0.0]], H + 1.0


@pytest.mark.parametrize("entry", ["step", "F"])
@pytest.mark.parametrize(
    "rule, message",
    [(_nan_after_first, "must be finite"), (_wrong_shape, "must return M of shape"), (_not_an_array, "must return M")],
)
def test_a_bad_rule_result_names_the_rule_and_changes_nothing(rule, message, entry):
    """A rule whose M' is not a finite (n, k) array raises HyperparameterError naming ``rule`` at that step;
    the state and parameters passed in stay as they were."""
    ns = _strict("float64")
    optimizer = rllc.rllc(rule, c1=0.1, c2=0.05, L0=[0.1, 0.2], H0=0.0, ns=ns)
    theta = [ns.asarray(np.full(s, 0.5)) for s in SHAPES]
    state = optimizer.init(theta)
    if rule is _nan_after_first:
        state, theta = optimizer.step(state, _observation(ns, 0), theta)
    before = {name: _host(ns, value) for name, value in state.fields().items()}
    theta_before = [ns.to_numpy(p).copy() for p in theta]
    with pytest.raises(HyperparameterError, match=message) as caught:
        if entry == "step":
            optimizer.step(state, _observation(ns, 1), theta)
        else:
            optimizer.F(state, _observation(ns, 1))
    assert caught.value.param == "rule"
    for name, value in state.fields().items():
        np.testing.assert_array_equal(_host(ns, value), before[name], err_msg=name)
    for p, q in zip(theta, theta_before):
        np.testing.assert_array_equal(ns.to_numpy(p), q)


def test_the_memory_pass_mixes_units_as_M_B_plus_g_a():
    """(R4) with a propagator whose units read each other, over parameters of several shapes (0-d and empty
    ones included): the memory after three steps is Σ_i g_i aᵀ B^{t−i} (eq. 2), in the Columns layout."""
    ns = _strict("float64")
    optimizer = _optimizer("linear_memory", ns)
    state = optimizer.init([ns.zeros(s) for s in SHAPES])
    grads = []
    for seed in range(3):
        obs = _observation(ns, seed)
        grads.append(np.concatenate([ns.to_numpy(g).reshape(-1) for g in obs.grad]))
        state = optimizer.F(state, obs)
    expected = sum(np.outer(g, MIXING_A @ np.linalg.matrix_power(MIXING_B, 2 - i)) for i, g in enumerate(grads))
    np.testing.assert_allclose(ns.to_numpy(state.M), expected, rtol=0, atol=tolerance("float64", 3, 1.0))
    assert [tuple(leaf.shape) for leaf in state.stored["M"][0]] == [(2, *s) for s in SHAPES]
