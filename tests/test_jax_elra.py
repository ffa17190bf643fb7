"""ELRA in the jax backend (stepspec/backends/jax/elra.py), beyond what the conformance suite checks: every
data-dependent rule is compiled (one trace of F, G and the fused step serves runs through every branch), the
fused step is F, G and θ + G, the authors' convention refuses a negative relaxed best on the host, and the
denominator of (E1) is formed entry by entry, which float32 needs."""

from __future__ import annotations

import collections
import importlib

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from stepspec import Observation  # noqa: E402
from stepspec.backends.jax import BACKEND, FLOAT32  # noqa: E402
from stepspec.backends.jax import elra as jax_elra  # noqa: E402
from stepspec.conformance.tolerance import tolerance  # noqa: E402
from stepspec.errors import ObservationError  # noqa: E402

reference = importlib.import_module("stepspec.reference.elra")

BACKENDS = [BACKEND, FLOAT32]
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


def _stream(steps: int, n: int = 3):
    """Scripted observations (θ is the run's own): gradients that shrink, repeat, flip and vanish, and a
    loss that falls with rises in between."""
    rng = np.random.default_rng(7)
    grads, losses = [], []
    for t in range(steps):
        g = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 2)
        if t % 7 == 3 and grads:
            g = grads[-1].copy()  # a repeated gradient: the ratio cap
        if t % 11 == 5:
            g = np.zeros(n)  # a zero gradient
        grads.append(g)
        losses.append(10.0 / (t + 1) + (8.0 if t % 5 == 4 else 0.0))
    return grads, losses


def _counted(algo: str):
    """The jax class of ``algo`` with F, G and the fused step counting their traces."""
    cls, counts = {"elra": jax_elra.ELRA, "elra_lean": jax_elra.LeanELRA}[algo], collections.Counter()

    class Counted(cls):
        @staticmethod
        def step_F(*args):
            counts["F"] += 1
            return cls.step_F(*args)

        @staticmethod
        def step_G(*args):
            counts["G"] += 1
            return cls.step_G(*args)

        @classmethod
        def pure_step(klass, *args):
            counts["step"] += 1
            return cls.pure_step(*args)

    def construct(backend, **hyperparameters):
        public = getattr(jax_elra, algo)(**hyperparameters, dtype=backend.dtype)
        return Counted(backend.dtype, needs=public.needs, **public.hyperparameters)

    return construct, counts


def _drive(optimizer, backend, grads, losses, fused: bool):
    """(the states' decision fields per step, the θ's), by F and G or by the fused step."""
    theta = np.linspace(-1.0, 1.0, len(grads[0]))
    s = optimizer.init(backend.asarray(theta))
    decisions, thetas = [], []
    for g, f in zip(grads, losses):
        obs = Observation(grad=backend.asarray(g), params=backend.asarray(theta), loss=f)
        if fused:
            s, new = optimizer.step(s, obs, backend.asarray(theta))
        else:
            s = optimizer.F(s, obs)
            new = backend.asarray(theta) + optimizer.G(s, obs)
        theta = np.asarray(new, dtype=np.float64)
        decisions.append({name: getattr(s, name) for name in DECISIONS})
        thetas.append(theta)
    return decisions, thetas


def _reference_decisions(algo, hyperparameters, grads, losses):
    optimizer = getattr(reference, algo)(**hyperparameters)
    theta = np.linspace(-1.0, 1.0, len(grads[0]))
    s, decisions = optimizer.init(theta), []
    for g, f in zip(grads, losses):
        obs = Observation(grad=g, params=theta, loss=f)
        s = optimizer.F(s, obs)
        theta = theta + optimizer.G(s, obs)
        decisions.append({name: getattr(s, name) for name in DECISIONS})
    return decisions


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("algo", ["elra", "elra_lean"])
def test_one_compilation_serves_every_branch(algo, backend):
    """A run through retraces, every limit, closing periods and a growing multiple, then a second optimizer
    with every switch off: F, G and the fused step are traced once each, and the decisions are the
    reference's on the same stream (not for the lean form in float32, whose recovered ⟨G_{t−1}, G_t⟩ carries the
    rounding of x_{t−1} − x_t: spec/elra.md#elra_lean, accuracy)."""
    construct, counts = _counted(algo)
    grads, losses = _stream(40)
    decisions, _ = _drive(construct(backend, **EVERY_BRANCH), backend, grads, losses, fused=False)
    if algo == "elra" or backend.dtype == "float64":  # the lean float32 α is only as good as x_{t−1} − x_t
        assert decisions == _reference_decisions(algo, EVERY_BRANCH, grads, losses)
    seen = {(name, d[name]) for d in decisions for name in ("retraced", "limit")}
    assert seen >= {("retraced", 0), ("retraced", 1), *(("limit", code) for code in range(5))}, sorted(seen)
    assert decisions[-1]["multiple"] > 1 and decisions[-1]["updates"] >= 1
    off = {"retrace": False, "batch_control": False, "correction": "none", "boost": True}
    _drive(construct(backend, **off), backend, grads, losses, fused=False)
    _drive(construct(backend, **EVERY_BRANCH), backend, grads, losses, fused=True)
    _drive(construct(backend, **off), backend, grads, losses, fused=True)
    assert counts == {"F": 1, "G": 1, "step": 1}


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize(
    "algo, hyperparameters",
    [("elra", EVERY_BRANCH), ("elra_lean", EVERY_BRANCH), ("elra", {"convention": "authors_code"})],
    ids=["elra", "elra_lean", "elra-authors_code"],
)
def test_the_fused_step_is_F_then_G(algo, hyperparameters, backend):
    """``step`` (one compiled call, one vector choice) gives the states and θ of F, G and θ + G, retraces
    included, up to the rounding of a reordered but algebraically equal update."""
    optimizer = getattr(jax_elra, algo)(**hyperparameters, dtype=backend.dtype)
    grads, losses = _stream(30)
    if hyperparameters.get("convention") == "authors_code":
        # the authors' √ of the relaxed best needs a positive loss, and their retrace a rise above 27 times it
        losses = [f + 20.0 + (1e3 if t % 5 == 4 else 0.0) for t, f in enumerate(losses)]
    separate, thetas = _drive(optimizer, backend, grads, losses, fused=False)
    fused, fused_thetas = _drive(optimizer, backend, grads, losses, fused=True)
    assert fused == separate
    assert any(d["retraced"] for d in fused)
    scale = max(np.max(np.abs(theta)) for theta in thetas)
    deviation = max(np.max(np.abs(a - b)) for a, b in zip(fused_thetas, thetas)) / scale
    assert deviation <= tolerance(backend.dtype, 0)


def test_a_negative_relaxed_best_is_refused_on_the_host():
    """convention='authors_code' takes √T: a negative relaxed best raises ObservationError('loss') before the
    compiled call, the state untouched (the January code fails the same way)."""
    construct, counts = _counted("elra")
    optimizer = construct(BACKEND, convention="authors_code")
    theta = BACKEND.asarray(np.ones(3))
    s = optimizer.F(optimizer.init(theta), Observation(grad=theta, params=theta, loss=-1.0))
    traced = dict(counts)
    before = {name: np.array(value) for name, value in s.fields().items()}
    for call in (optimizer.F, optimizer.step):
        with pytest.raises(ObservationError) as raised:
            call(s, Observation(grad=theta, params=theta, loss=-2.0), *([theta] if call == optimizer.step else []))
        assert raised.value.param == "loss"
    assert dict(counts) == traced
    assert all(np.array_equal(before[name], value) for name, value in s.fields().items())


def test_the_denominator_does_not_cancel_in_float32():
    """Successive gradients that differ in one entry by 4 ulps: D = ‖G_{t−1}‖² − ⟨G_t, G_{t−1}⟩ is 3e-11 ‖G_{t−1}‖².
    As the difference of two float32 sums it keeps no digit; formed entry by entry (⟨G_{t−1}, G_{t−1} − G_t⟩)
    the float32 α is within the policy's one-step tolerance of the exact value of the same float32 inputs."""
    rng = np.random.default_rng(3)
    h = (1.0 + rng.random(10_000)).astype(np.float32)
    g = h.copy()
    for _ in range(4):
        g[0] = np.nextafter(g[0], np.float32(0))
    h64, g64 = h.astype(np.float64), g.astype(np.float64)
    alpha0 = 0.5
    exact = alpha0 * (h64 @ h64) / (h64 @ (h64 - g64))  # κ = 1
    with jax.enable_x64(False):
        h32, g32 = jax.numpy.asarray(h), jax.numpy.asarray(g)
        two_sums = float(jax.numpy.sum(h32 * h32) - jax.numpy.sum(g32 * h32))
    assert two_sums == 0 or abs(alpha0 * float(h64 @ h64) / two_sums - exact) / exact > 1
    optimizer = jax_elra.elra(correction="none", max_ratio=1e14, lr_max=1e14, retrace=False, dtype="float32")
    theta = FLOAT32.asarray(np.zeros(h.size))
    s = optimizer.init(theta, step=1, alpha=alpha0, g_prev=FLOAT32.asarray(h))
    s = optimizer.F(s, Observation(grad=FLOAT32.asarray(g), params=theta, loss=0.0))
    assert s.limit == jax_elra.NO_LIMIT
    assert abs(s.alpha - exact) / exact <= tolerance("float32", 0)
