"""ELRA in the array-API backend (stepspec/backends/array_api/elra.py), beyond what the conformance suite checks:
a run through every branch (retraces, each limit, closing periods, a growing multiple, the authors' convention)
takes the reference's decisions on every namespace, the cupy emulation included, and ``step`` equals F then G;
a step is one reduction round and one host read (none where no sum is needed) and one elementwise pass per
parameter besides the sums; the denominator of (E1) is formed entry by entry, which float32 needs; zero and
repeated gradients in the ratio behave as the reference's; the authors' convention refuses a negative relaxed
best before any work."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

array_api_strict = pytest.importorskip("array_api_strict")
import array_api_compat.numpy as compat_numpy  # noqa: E402

from stepspec import Observation, reference  # noqa: E402
from stepspec.backends.array_api import ALGORITHMS  # noqa: E402
from stepspec.backends.array_api import elra as array_api_elra  # noqa: E402
from stepspec.backends.array_api._core import Namespace  # noqa: E402
from stepspec.conformance.tolerance import tolerance  # noqa: E402
from stepspec.errors import ObservationError  # noqa: E402

from .test_array_api_backend import EmulatedKernels  # noqa: E402

SHAPES = [(2,), (1, 1), (0,)]
"""A structure of n = 3 with an empty parameter: every sum is a sum over leaves."""
N = 3
DECISIONS = ("step", "retraced", "limit", "periods", "period_batches", "period_count", "updates", "multiple")

# Every switch on; the stream below takes every branch: retraces (the loss rises above f̄ + kσ), each of the
# five limits, periods closing and the batch multiple growing.
EVERY_BRANCH = {
    "crop": 2.0,
    "warmup_steps": 3,
    "warmup_floor": 0.5,
    "max_ratio": 4.0,
    "lr_max": 50.0,
    "batch_control": True,
    "period": 3,
    "gradient_decay": True,
    "boost": True,
    "weight_decay": 0.999,
}
CASES = {
    "elra": ("elra", EVERY_BRANCH),
    "elra_lean": ("elra_lean", EVERY_BRANCH),
    "elra-authors_code": ("elra", {"convention": "authors_code"}),
}


def _namespaces(dtype: str) -> dict:
    return {
        "strict": Namespace(array_api_strict, dtype),
        "numpy": Namespace(compat_numpy, dtype),
        "emulated-cupy": Namespace(compat_numpy, dtype, kernels=EmulatedKernels(dtype)),
    }


def _stream(steps: int, authors_code: bool = False):
    """Scripted gradients that shrink, repeat, flip and vanish, and a loss that falls with rises in between
    (for the authors' convention positive, rising 27 times above its relaxed best)."""
    rng = np.random.default_rng(7)
    grads, losses = [], []
    for t in range(steps):
        g = rng.standard_normal(N) * 10.0 ** rng.integers(-3, 2)
        if t % 7 == 3 and grads:
            g = grads[-1].copy()  # a repeated gradient: the ratio cap
        if t % 11 == 5:
            g = np.zeros(N)  # a zero gradient
        grads.append(g)
        f = 10.0 / (t + 1) + (8.0 if t % 5 == 4 else 0.0)
        losses.append(f + 20.0 + (1e3 if t % 5 == 4 else 0.0) if authors_code else f)
    return grads, losses


def _split(ns: Namespace, vector) -> list:
    vector = np.asarray(vector, dtype=ns.dtype)
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in SHAPES])
    return [ns.asarray(vector[a:b].reshape(s)) for a, b, s in zip(offsets, offsets[1:], SHAPES)]


def _join(ns: Namespace, parts) -> np.ndarray:
    return np.concatenate([np.asarray(ns.to_numpy(p), dtype=np.float64).reshape(-1) for p in parts])


def _drive(optimizer, ns: Namespace, grads, losses, fused: bool):
    """(the states' decision fields and α per step, the θ's), by F and G or by the fused step."""
    theta = _split(ns, np.linspace(-1.0, 1.0, N))
    s = optimizer.init(theta)
    decisions, thetas = [], []
    for g, f in zip(grads, losses):
        obs = Observation(grad=_split(ns, g), params=theta, loss=f)
        if fused:
            s, theta = optimizer.step(s, obs, theta)
        else:
            s = optimizer.F(s, obs)
            theta = [p + d for p, d in zip(theta, optimizer.G(s, obs))]
        decisions.append({name: getattr(s, name) for name in DECISIONS})
        thetas.append(_join(ns, theta))
    return decisions, thetas


def _reference_decisions(algo, hyperparameters, grads, losses):
    optimizer = reference.ALGORITHMS[algo](**hyperparameters)
    theta = np.linspace(-1.0, 1.0, N)
    s, decisions = optimizer.init(theta), []
    for g, f in zip(grads, losses):
        obs = Observation(grad=g, params=theta, loss=f)
        s = optimizer.F(s, obs)
        theta = theta + optimizer.G(s, obs)
        decisions.append({name: getattr(s, name) for name in DECISIONS})
    return decisions


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_branch_on_every_namespace(case, dtype):
    """A run through retraces, every limit, closing periods and a growing multiple: on every namespace (the
    cupy emulation included: every pass compiles) the decisions are the reference's on the same stream (not
    for the lean form in float32, whose recovered ⟨G_{t−1}, G_t⟩ carries the rounding of x_{t−1} − x_t:
    spec/elra.md#elra_lean, accuracy), and ``step`` gives the decisions and θ of F then θ + G."""
    algo, hyperparameters = CASES[case]
    grads, losses = _stream(40, authors_code=case.endswith("authors_code"))
    expected = _reference_decisions(algo, hyperparameters, grads, losses)
    for label, ns in _namespaces(dtype).items():
        optimizer = ALGORITHMS[algo](**hyperparameters, ns=ns)
        separate, thetas = _drive(optimizer, ns, grads, losses, fused=False)
        fused, fused_thetas = _drive(optimizer, ns, grads, losses, fused=True)
        if algo == "elra" or dtype == "float64":
            assert separate == expected, label
        assert fused == separate, label
        seen = {(name, d[name]) for d in separate for name in ("retraced", "limit")}
        assert {("retraced", 0), ("retraced", 1)} <= seen, label
        if case != "elra-authors_code":
            assert {("limit", code) for code in range(5)} <= seen, (label, sorted(seen))
            assert separate[-1]["multiple"] > 1
        scale = max(np.max(np.abs(theta)) for theta in thetas)
        deviation = max(np.max(np.abs(a - b)) for a, b in zip(fused_thetas, thetas)) / scale
        assert deviation <= tolerance(dtype, 0), label


@dataclasses.dataclass(eq=False)
class CountingNamespace(Namespace):
    """A namespace that records the step's reduction rounds of (k,) rows (the core's finite checks reduce 0-d
    sums and are not counted) and its host reads."""

    rounds: list = dataclasses.field(default_factory=list)
    reads: int = 0

    def reduce_sum(self, partials):
        if partials[0].ndim == 1:
            self.rounds.append(int(partials[0].shape[0]))
        return super().reduce_sum(partials)

    def to_numpy(self, x):
        self.reads += 1
        return super().to_numpy(x)


@pytest.mark.parametrize("fused", [False, True], ids=["F", "step"])
@pytest.mark.parametrize(
    "algo, hyperparameters, expected",
    [
        # first step, accepted, retrace: (the widths of the step's rounds)
        ("elra", {}, [[], [2], [1]]),
        ("elra", {"crop": 2.0}, [[1], [3], [1]]),
        ("elra_lean", {}, [[1], [2], []]),
        ("elra", {"convention": "authors_code"}, [[], [2], [1]]),
    ],
    ids=["elra", "elra-crop", "elra_lean", "elra-authors_code"],
)
def test_one_round_and_one_host_read_per_step(algo, hyperparameters, expected, fused):
    """Each step reduces its sums in at most one round of (k,) rows, read to the host once: ‖G_t‖² at the first
    step only where the crop reads it (the lean form keeps it), k = 2 or 3 on an accepted step, ‖G_{t−1}‖² on a
    retrace (the lean form: nothing)."""
    ns = CountingNamespace(array_api_strict, "float64")
    optimizer = ALGORITHMS[algo](**hyperparameters, ns=ns)
    theta = _split(ns, [0.5, -1.0, 2.0])
    s = optimizer.init(theta)
    losses = [30.0, 20.0, 2000.0] if "convention" in hyperparameters else [3.0, 2.0, 50.0]
    for t, (f, want) in enumerate(zip(losses, expected)):
        ns.rounds.clear()
        ns.reads = 0
        obs = Observation(grad=_split(ns, [1.0 + t, -2.0, 0.5 * t]), params=theta, loss=f)
        if fused:
            s, theta = optimizer.step(s, obs, theta)
        else:
            s = optimizer.F(s, obs)
            theta = [p + d for p, d in zip(theta, optimizer.G(s, obs))]
        assert (ns.rounds, ns.reads) == (want, len(want)), f"step {t + 1}"
    assert s.retraced == 1


@pytest.mark.parametrize(
    "algo, hyperparameters",
    [("elra", {}), ("elra", {"crop": 2.0}), ("elra_lean", {}), ("elra", {"convention": "authors_code"})],
    ids=["elra", "elra-crop", "elra_lean", "elra-authors_code"],
)
def test_passes_per_step_under_cupy(algo, hyperparameters):
    """Under the cupy emulation a fused step is one compiled pass per parameter (the stored G̃_t written by the
    same pass as θ), plus one per parameter on an accepted step for the entrywise difference its round reduces
    (G_{t−1} − G̃_t of the denominator, ω x_{t−1} − x_t of the lean form): 1, 2, 1 at the first step, an
    accepted step and a retrace."""
    kernels = EmulatedKernels("float32")
    ns = Namespace(compat_numpy, "float32", kernels=kernels)
    optimizer = ALGORITHMS[algo](**hyperparameters, ns=ns)
    theta = _split(ns, [0.5, -1.0, 2.0])
    s = optimizer.init(theta)
    losses = [30.0, 20.0, 2000.0] if "convention" in hyperparameters else [3.0, 2.0, 50.0]
    for t, (f, passes) in enumerate(zip(losses, (1, 2, 1))):
        kernels.calls = 0
        obs = Observation(grad=_split(ns, [1.0 + t, -2.0, 0.5 * t]), params=theta, loss=f)
        s, theta = optimizer.step(s, obs, theta)
        assert kernels.calls == passes * len(SHAPES), f"step {t + 1}"
    assert s.retraced == 1


@pytest.mark.parametrize("namespace", ["strict", "numpy", "emulated-cupy"])
def test_the_denominator_does_not_cancel_in_float32(namespace):
    """Successive gradients that differ in one entry by 4 ulps: D = ‖G_{t−1}‖² − ⟨G_t, G_{t−1}⟩ is 3e-11
    ‖G_{t−1}‖². As the difference of two float32 sums it keeps no digit; formed entry by entry (⟨G_{t−1}, G_{t−1} −
    G_t⟩) the float32 α is within the policy's one-step tolerance of the exact value of the same float32 inputs."""
    rng = np.random.default_rng(3)
    h = (1.0 + rng.random(10_000)).astype(np.float32)
    g = h.copy()
    for _ in range(4):
        g[0] = np.nextafter(g[0], np.float32(0))
    h64, g64 = h.astype(np.float64), g.astype(np.float64)
    alpha0 = 0.5
    exact = alpha0 * (h64 @ h64) / (h64 @ (h64 - g64))  # κ = 1
    two_sums = float(np.sum(h * h, dtype=np.float32) - np.sum(g * h, dtype=np.float32))
    assert two_sums == 0 or abs(alpha0 * float(h64 @ h64) / two_sums - exact) / exact > 1
    ns = _namespaces("float32")[namespace]
    optimizer = ALGORITHMS["elra"](correction="none", max_ratio=1e14, lr_max=1e14, retrace=False, ns=ns)
    theta = ns.asarray(np.zeros(h.size, np.float32))
    s = optimizer.init(theta, step=1, alpha=alpha0, g_prev=h)
    s = optimizer.F(s, Observation(grad=ns.asarray(g), params=theta, loss=0.0))
    assert s.limit == array_api_elra.NO_LIMIT
    assert abs(s.alpha - exact) / exact <= tolerance("float32", 0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("namespace", ["strict", "numpy", "emulated-cupy"])
@pytest.mark.parametrize("algo", ["elra", "elra_lean"])
def test_zero_and_repeated_gradients_in_the_ratio(algo, namespace, dtype):
    """As the reference (spec/elra.md#zero-and-repeated-gradients), in both precisions: G_t = 0 multiplies α by
    κ (the denominator is ‖G_{t−1}‖² to the bit); G_{t−1} = 0 keeps α; G_t = G_{t−1} (``elra``: the entrywise
    difference is exactly 0) is the cap case; every α and θ finite."""
    ns = _namespaces(dtype)[namespace]
    optimizer = ALGORITHMS[algo](retrace=False, ns=ns)
    reference_optimizer = reference.ALGORITHMS[algo](retrace=False)
    h = np.array([0.75, -1.5, 3.0])
    stream = [h, np.zeros(N), np.zeros(N), h, h] if algo == "elra" else [h, np.zeros(N), np.zeros(N), h]
    theta, theta_ref = _split(ns, [0.5, -1.0, 2.0]), np.array([0.5, -1.0, 2.0])
    s, s_ref = optimizer.init(theta), reference_optimizer.init(theta_ref)
    alphas, reference_alphas, limits = [], [], []
    for g in stream:
        s, theta = optimizer.step(s, Observation(grad=_split(ns, g), params=theta, loss=1.0), theta)
        obs = Observation(grad=g, params=theta_ref, loss=1.0)
        s_ref = reference_optimizer.F(s_ref, obs)
        theta_ref = theta_ref + reference_optimizer.G(s_ref, obs)
        alphas.append(s.alpha)
        reference_alphas.append(s_ref.alpha)
        limits.append(s.limit)
    kappa = 1.0 + 0.15 / (1.0 + alphas[0] ** 2)
    assert alphas[1] == pytest.approx(alphas[0] * kappa, rel=1e-15)  # G_t = 0: the ratio κ
    assert alphas[2] == alphas[1]  # G_{t−1} = 0: α kept
    if algo == "elra":
        assert alphas[4] == alphas[3] * optimizer.max_ratio and limits[4] == array_api_elra.RATIO_CAP  # repeated
    np.testing.assert_allclose(alphas, reference_alphas, rtol=tolerance(dtype, 0))
    assert np.all(np.isfinite(_join(ns, theta)))


@pytest.mark.parametrize("use_step", [False, True], ids=["F", "step"])
def test_a_negative_relaxed_best_is_refused_before_any_work(use_step):
    """convention='authors_code' takes √T: a negative relaxed best raises ObservationError('loss') before the
    step's round, the state untouched (the January code fails the same way)."""
    ns = CountingNamespace(array_api_strict, "float64")
    optimizer = ALGORITHMS["elra"](convention="authors_code", ns=ns)
    theta = _split(ns, [1.0, 1.0, 1.0])
    s = optimizer.F(optimizer.init(theta), Observation(grad=theta, params=theta, loss=-1.0))
    before = {name: _join(ns, [v]) if hasattr(v, "shape") else v for name, v in s.fields().items()}
    ns.rounds.clear()
    with pytest.raises(ObservationError) as raised:
        obs = Observation(grad=theta, params=theta, loss=-2.0)
        optimizer.step(s, obs, theta) if use_step else optimizer.F(s, obs)
    assert raised.value.param == "loss" and ns.rounds == []
    after = {name: _join(ns, [v]) if hasattr(v, "shape") else v for name, v in s.fields().items()}
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
