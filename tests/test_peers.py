"""The peers under the suite (stepspec/backends/peers, spec/classical.md#peers): the adapter runs each peer
exactly as the peer runs itself, and a backend's expected failures become xfailed rows
(spec/conformance.md#backends)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stepspec import Observation
from stepspec.backends.registry import BackendError, expand, resolve
from stepspec.conformance.report import Report, RowId, RowResult
from stepspec.errors import HyperparameterError, StateError

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
TORCH_OPTIM = expand(["torch.optim"])
SHAPES = [(2, 3), (), (0,), (4,)]  # a matrix, a 0-d scalar, an empty tensor, a vector
TORCH_CLASSES = {
    "sgd": (torch.optim.SGD, {"lr": 0.1}, {"lr": 0.1}),
    "momentum": (torch.optim.SGD, {"lr": 0.1, "beta": 0.8}, {"lr": 0.1, "momentum": 0.8}),
    "nag": (torch.optim.SGD, {"lr": 0.1, "beta": 0.8}, {"lr": 0.1, "momentum": 0.8, "nesterov": True}),
    "adam": (torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.01, "weight_decay": 0.1}),
    "adamw": (torch.optim.AdamW, {"lr": 0.01}, {"lr": 0.01}),
    "rmsprop": (torch.optim.RMSprop, {"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.01, "weight_decay": 0.1}),
}
"""algo → (torch class, the spec's hyperparameters, torch's arguments for them)."""
FLAGS = {
    "torch.optim-forloop": {"foreach": False},
    "torch.optim-foreach": {"foreach": True},
    "torch.optim-fused": {"fused": True},
}
STATE_KEYS = {"m": ("momentum_buffer", "exp_avg"), "v": ("exp_avg_sq", "square_avg")}


def _tensors(rng, shapes=SHAPES):
    return [torch.from_numpy(rng.standard_normal(shape)) for shape in shapes]


def _same(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def _drive_torch_and_adapter(optimizer, make_torch, steps=3, seed=0):
    """Three steps of torch's own optimizer and of the adapter from the same θ and gradients; the adapter
    is fed torch's own θ_{t−1}, so every step starts from identical inputs. Yields (torch's parameters
    before and after, torch's state, the adapter's state and G) per step, and checks F leaves its input alone."""
    rng = np.random.default_rng(seed)
    params = _tensors(rng)
    reference = make_torch(params)
    state = optimizer.init([p.clone() for p in params])
    for _ in range(steps):
        grads = _tensors(rng)
        before = [p.clone() for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        reference.step()
        obs = Observation(grad=grads, params=before)
        given = {name: getattr(state, name) for name in optimizer.fields}
        new = optimizer.F(state, obs)
        assert all(_same(value, getattr(state, name)) for name, value in given.items())
        yield before, params, reference, new, optimizer.G(new, obs)
        state = new


@pytest.mark.parametrize("name", TORCH_OPTIM)
@pytest.mark.parametrize("algo", list(TORCH_CLASSES))
def test_the_adapter_runs_torch_exactly(name, algo):
    """On a structure with a matrix, a 0-d and an empty tensor, F gives torch's own state bit for bit (m ←
    momentum_buffer / exp_avg, v ← exp_avg_sq / square_avg, step), and G its θ_t − θ_{t−1} to within the
    rounding of θ that an update applied in place carries."""
    backend = resolve(name)
    if algo not in backend.algorithms:
        pytest.skip(f"{name} has no {algo}")
    cls, spec_hp, torch_hp = TORCH_CLASSES[algo]
    optimizer = backend.algorithms[algo](**spec_hp)
    steps = _drive_torch_and_adapter(optimizer, lambda ps: cls(ps, **torch_hp, **FLAGS[name]))
    for t, (before, after, reference, state, delta) in enumerate(steps, start=1):
        held = [reference.state[p] for p in after]
        for field, keys in STATE_KEYS.items():
            if field in optimizer.fields:
                key = next(k for k in keys if k in held[0])
                assert torch.equal(getattr(state, field), torch.cat([h[key].reshape(-1) for h in held])), (t, field)
        if "step" in optimizer.fields:
            assert state.step == t == int(held[0]["step"])
        for d, a, b in zip(delta, after, before):
            assert torch.allclose(d, a - b, rtol=0, atol=4 * float(torch.finfo(torch.float64).eps)), (t, d, a - b)


@pytest.mark.parametrize("name", [*TORCH_OPTIM, *expand(["torch.optim-float32"])])
def test_the_first_adam_step_is_known_to_the_rounding_of_theta(name):
    """Why adam_first_step is an expected failure of torch.optim: torch applies the step to θ in place, so
    θ_1 − θ_0 is within a few u·max(|θ|, |G|) of the closed form, but on the scale of the step alone, where
    the property measures it, far beyond its tolerance (the figures of spec/classical.md#peers: run with -s)."""
    from stepspec.conformance.tolerance import UNIT_ROUNDOFF, tolerance

    backend = resolve(name)
    u, rng = UNIT_ROUNDOFF[backend.dtype], np.random.default_rng(0)
    on_update_scale = on_step_scale = 0.0
    for _ in range(100):
        theta, g = rng.standard_normal(5), rng.standard_normal(5)
        lr, decay, eps = 10 ** rng.uniform(-6, -1), 10 ** rng.uniform(-4, 0), 1e-8
        for algo in ("adam", "adamw"):
            optimizer = backend.algorithms[algo](lr=lr, weight_decay=decay)
            theta_n, g_n = backend.asarray(theta), backend.asarray(g)
            obs = Observation(grad=g_n, params=theta_n)
            step = backend.to_numpy(optimizer.G(optimizer.F(optimizer.init(theta_n), obs), obs)).astype(float)
            theta_h, g_h = (backend.to_numpy(x).astype(float) for x in (theta_n, g_n))
            moment = g_h + decay * theta_h if algo == "adam" else g_h
            expected = -lr * moment / (np.abs(moment) + eps) - (lr * decay * theta_h if algo == "adamw" else 0.0)
            error = np.abs(step - expected)
            on_update_scale = max(on_update_scale, np.max(error / (u * np.maximum(np.abs(theta_h), np.abs(expected)))))
            on_step_scale = max(on_step_scale, np.max(error / np.abs(expected)))
    print(f"{name}: {on_update_scale:.2f} u of max(|θ|, |G|), {on_step_scale / u:.2g} u of |G|")
    assert on_update_scale <= 8.0, on_update_scale
    assert on_step_scale > tolerance(backend.dtype, 0, 4.0), on_step_scale  # adam_first_step's bound


def test_aliases_name_every_implementation_and_fused_has_no_rmsprop():
    assert TORCH_OPTIM == ["torch.optim-forloop", "torch.optim-foreach", "torch.optim-fused"]
    assert expand(["torch.optim-float32", "reference"]) == [
        "torch.optim-forloop-float32",
        "torch.optim-foreach-float32",
        "torch.optim-fused-float32",
        "reference",
    ]
    assert set(resolve("torch.optim-foreach").algorithms) == set(TORCH_CLASSES)
    assert set(resolve("torch.optim-fused").algorithms) == set(TORCH_CLASSES) - {"rmsprop"}
    assert resolve("torch.optim-fused-float32").dtype == "float32"


def test_G_needs_the_state_F_returned():
    """torch computes the update only from S_{t−1}: G refuses an S_t built by init, except for SGD, whose
    state is empty."""
    backend = resolve("torch.optim-forloop")
    theta, g = backend.asarray(np.array([1.0, -2.0])), backend.asarray(np.array([0.5, 0.25]))
    obs = Observation(grad=g, params=theta)
    adam = backend.algorithms["adam"](lr=0.1)
    s1 = adam.F(adam.init(theta), obs)
    assert torch.equal(adam.G(s1, obs), adam.G(s1, obs))
    with pytest.raises(StateError) as raised:
        adam.G(adam.init(theta, step=s1.step, m=s1.m, v=s1.v), obs)
    assert raised.value.param == "state"
    sgd = backend.algorithms["sgd"](lr=0.1)
    assert torch.equal(sgd.G(sgd.init(theta), obs), -0.1 * g)


def test_refusals_name_the_spec_hyperparameter():
    """A value torch's constructor refuses is HyperparameterError naming the spec's name (beta for torch's
    momentum); what torch accepts is not checked by the adapter."""
    algorithms = resolve("torch.optim-forloop").algorithms
    for algo, hp, param in [
        ("adam", {"lr": -1.0}, "lr"),
        ("adam", {"betas": (0.9, 1.0)}, "betas"),
        ("adamw", {"weight_decay": "0.5"}, "weight_decay"),
        ("rmsprop", {"alpha": -0.5}, "alpha"),
        ("momentum", {"lr": 0.1, "beta": -1.0}, "beta"),
    ]:
        with pytest.raises(HyperparameterError) as raised:
            algorithms[algo](**hp)
        assert raised.value.param == param and "torch.optim" in str(raised.value)
    algorithms["adam"](lr=0.0)  # torch's domain: lr ≥ 0


def test_values_pass_through_to_torch():
    """A NaN gradient is torch's to handle: the adapter does not check it, and torch propagates it."""
    backend = resolve("torch.optim-forloop")
    adam = backend.algorithms["adam"]()
    s = adam.F(adam.init(backend.asarray(np.zeros(2))), Observation(grad=backend.asarray(np.array([np.nan, 1.0]))))
    assert torch.isnan(s.m[0]) and not torch.isnan(s.m[1])


def test_zero_momentum_is_torch_plain_sgd():
    """torch keeps no buffer at momentum 0 and refuses Nesterov there; (C3) and (C5) at β = 0 are m_t = g_t and
    plain SGD, which the adapter runs (spec/classical.md#peers)."""
    backend = resolve("torch.optim-fused")
    g = backend.asarray(np.array([0.5, -0.25]))
    obs = Observation(grad=g)
    for algo in ("momentum", "nag"):
        optimizer = backend.algorithms[algo](lr=0.1, beta=0.0)
        s = optimizer.F(optimizer.init(backend.asarray(np.zeros(2))), obs)
        assert torch.equal(s.m, g) and torch.equal(optimizer.G(s, obs), -0.1 * g)


# --------------------------------------------------------------------------- Lion


LION = {
    "lion-pytorch": ("lion_pytorch", {}),
    "pytorch-optimizer-forloop": ("pytorch_optimizer", {"foreach": False}),
    "pytorch-optimizer-foreach": ("pytorch_optimizer", {"foreach": True}),
}


@pytest.mark.parametrize("name", list(LION))
def test_the_adapter_runs_lion_exactly(name):
    """The package's own Lion and the adapter agree bit for bit in m and to the rounding of θ in G; c is
    (C15) from the package's m_{t−1}."""
    module_name, flags = LION[name]
    module = pytest.importorskip(module_name)
    optimizer = resolve(name).algorithms["lion"](lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)
    m = [torch.zeros(shape, dtype=torch.float64) for shape in SHAPES]
    for before, after, reference, state, delta in _drive_torch_and_adapter(
        optimizer, lambda ps: module.Lion(ps, lr=0.01, betas=(0.8, 0.95), weight_decay=0.1, **flags)
    ):
        grads = [p.grad for p in after]
        expected_c = torch.cat([(0.8 * a + 0.2 * g).reshape(-1) for a, g in zip(m, grads)])
        m = [reference.state[p]["exp_avg"].clone() for p in after]
        assert torch.equal(state.m, torch.cat([x.reshape(-1) for x in m]))
        assert torch.allclose(state.c, expected_c, rtol=1e-15, atol=0)
        for d, a, b in zip(delta, after, before):
            assert torch.allclose(d, a - b, rtol=0, atol=4 * float(torch.finfo(torch.float64).eps))


def test_a_missing_optional_peer_fails_to_load_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "lion_pytorch", None)  # as if not installed
    with pytest.raises(BackendError) as raised:
        resolve("lion-pytorch")
    assert "lion-pytorch is not installed" in str(raised.value) and "\n" not in str(raised.value)


# --------------------------------------------------------------------------- expected failures in the suite


def _stale():
    """torch.optim-forloop with one expected failure that does not fail: complex gradients are refused."""
    backend = resolve("torch.optim-forloop")
    backend.expected_failures = {**backend.expected_failures, ("sgd", "errors", "grad complex"): "stale entry"}
    return backend


def _conform(tmp_path, backend):
    path = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stepspec",
            "conform",
            "--backend",
            backend,
            "--algorithm",
            "sgd",
            "-k",
            "errors and grad",
        ]
        + ["--json", str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    (row,) = [r for r in json.loads(path.read_text())["rows"] if r["property"] == "errors"]
    return done, row


def test_expected_failures_are_xfailed_rows_and_stale_ones_fail(tmp_path):
    done, row = _conform(tmp_path, "torch.optim-forloop")
    assert done.returncode == 0, done.stdout[-3000:]
    assert row["status"] == "xfailed" and len(row["expected_failures"]) == 1
    assert sorted(row["expected_failures"][0]["cases"]) == ["grad +Inf", "grad -Inf", "grad NaN"]
    assert "expected failures" in done.stdout and "grad NaN" in done.stdout
    done, row = _conform(tmp_path, "tests.test_peers:_stale")
    assert done.returncode == 1 and row["status"] == "failed"
    assert any("XPASS(strict)" in m and "stale entry" in m for m in row["messages"])


def test_one_expected_failure_makes_the_row_xfailed():
    report = Report({})
    row = RowId("b", "b", "1", "float64", "cpu", "adam", "errors")
    report.add(RowResult(row, "t[adam-grad complex]", "passed").as_dict())
    report.add(RowResult(row, "t[adam-grad NaN]", "xfailed", message="values unchecked", case="grad NaN").as_dict())
    assert report.counts("b")["xfailed"] == 1 and report.counts("b")["passed"] == 0
    assert "adam errors (1 case: grad NaN): values unchecked" in report.as_text(["adam"])
    report.add(RowResult(row, "t[adam-grad +Inf]", "failed", message="boom").as_dict())
    assert report.counts("b")["failed"] == 1


# --------------------------------------------------------------------------- optax


def _optax_runs():
    """algo → (the spec's hyperparameters, optax's own transformation for them, as an optax user writes it)."""
    optax = pytest.importorskip("optax")
    return {
        "sgd": ({"lr": 0.1}, optax.sgd(0.1)),
        "momentum": ({"lr": 0.1, "beta": 0.8}, optax.sgd(0.1, momentum=0.8)),
        "nag": ({"lr": 0.1, "beta": 0.8}, optax.sgd(0.1, momentum=0.8, nesterov=True)),
        "adam": (
            {"lr": 0.01, "weight_decay": 0.1},
            optax.chain(optax.add_decayed_weights(0.1), optax.adam(0.01)),
        ),
        "adamw": ({"lr": 0.01}, optax.adamw(0.01, weight_decay=0.01)),
        "rmsprop": (
            {"lr": 0.01, "weight_decay": 0.1},
            optax.chain(optax.add_decayed_weights(0.1), optax.rmsprop(0.01, decay=0.99, eps_in_sqrt=False)),
        ),
        "lion": (
            {"lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.1},
            optax.lion(0.01, b1=0.8, b2=0.95, weight_decay=0.1),
        ),
    }


OPTAX_ALGORITHMS = ["sgd", "momentum", "nag", "adam", "adamw", "rmsprop", "lion"]
OPTAX_STATE = {"m": ("trace", "mu"), "v": ("nu",), "step": ("count",)}
"""Spec field → the attribute of optax's state that holds it."""


def _optax_held(state, names):
    """The first of ``names`` that a NamedTuple in optax's (chained) state has as a field, its value; or None."""
    for name in names:
        if name in getattr(state, "_fields", ()):
            return getattr(state, name)
    for part in state if isinstance(state, tuple) else ():
        found = _optax_held(part, names)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize("algo", OPTAX_ALGORITHMS)
def test_the_adapter_runs_optax_exactly(algo):
    """Three steps of optax's own loop (update, apply_updates) under x64 and of the optax backend, on a structure
    with a matrix, a 0-d and an empty array: G is optax's update and every state field optax's own, bit for
    bit (m ← trace / mu, v ← nu, step ← count); lion's c is (C15) from optax's m_{t−1}; x64 stays off outside."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    spec_hp, transformation = _optax_runs()[algo]
    optimizer = resolve("optax").algorithms[algo](**spec_hp)
    rng = np.random.default_rng(0)
    theta = [rng.standard_normal(shape) for shape in SHAPES]
    with jax.enable_x64(True):
        held = transformation.init([jax.numpy.asarray(p) for p in theta])
    state = optimizer.init(theta)
    for t in range(1, 4):
        grads = [rng.standard_normal(shape) for shape in SHAPES]
        previous_m = _optax_held(held, OPTAX_STATE["m"])
        with jax.enable_x64(True):
            as_jax = [jax.numpy.asarray(p) for p in theta]
            updates, held = transformation.update([jax.numpy.asarray(g) for g in grads], held, as_jax)
            after = [np.asarray(p) for p in optax.apply_updates(as_jax, updates)]
        obs = Observation(grad=grads, params=theta)
        state = optimizer.F(state, obs)
        delta = optimizer.G(state, obs)
        for d, u, a, b in zip(delta, updates, after, theta):
            assert d.dtype == np.float64 and np.array_equal(d, np.asarray(u)) and np.array_equal(b + d, a), (t, algo)
        for field, names in OPTAX_STATE.items():
            if field in optimizer.fields:
                expected = _optax_held(held, names)
                if field == "step":
                    assert state.step == int(expected) == t
                else:
                    assert np.array_equal(getattr(state, field), np.concatenate([e.reshape(-1) for e in expected]))
        if algo == "lion":
            c = [0.8 * np.asarray(m) + (1 - 0.8) * g for m, g in zip(previous_m, grads)]
            assert np.array_equal(state.c, np.concatenate([x.reshape(-1) for x in c]))
        theta = after
    assert not jax.config.jax_enable_x64


def test_the_optax_backends_resolve_in_their_precisions():
    pytest.importorskip("optax")
    for name, dtype in [("optax", np.float64), ("optax-float32", np.float32)]:
        backend = resolve(name)
        assert backend.dtype == np.dtype(dtype).name and set(backend.algorithms) == set(OPTAX_ALGORITHMS)
        rmsprop = backend.algorithms["rmsprop"](lr=0.1)
        g = backend.asarray(np.array([0.5, -0.25]))
        obs = Observation(grad=g)
        step = rmsprop.G(rmsprop.F(rmsprop.init(backend.asarray(np.zeros(2))), obs), obs)
        assert step.dtype == dtype  # ε outside the root (eps_in_sqrt=False): (C14) from v_0 = 0
        expected = -0.1 * g / (np.sqrt(0.01 * g.astype(float) ** 2) + 1e-8)
        assert np.allclose(step, expected, rtol=float(np.finfo(dtype).eps) * 8, atol=0)


def test_optax_refusals_name_the_spec_hyperparameter_and_values_pass_through():
    """optax checks no hyperparameter value; one it cannot use fails its first update, which the adapter reports
    as HyperparameterError naming the spec's name. G needs the state F returned, as for torch.optim."""
    pytest.importorskip("optax")
    algorithms = resolve("optax").algorithms
    for algo, hp, param in [("adamw", {"weight_decay": "0.5"}, "weight_decay"), ("lion", {"betas": (0.9,)}, "betas")]:
        with pytest.raises(HyperparameterError) as raised:
            algorithms[algo](**hp)
        assert raised.value.param == param and "optax" in str(raised.value)
    adam = algorithms["adam"](lr=-1.0)  # outside the spec's domain: optax's to judge
    obs = Observation(grad=np.array([np.nan, 1.0]))
    s = adam.F(adam.init(np.zeros(2)), obs)
    assert np.isnan(s.m[0]) and not np.isnan(s.m[1])
    with pytest.raises(StateError) as raised:
        adam.G(adam.init(np.zeros(2), step=s.step, m=s.m, v=s.v), obs)
    assert raised.value.param == "state"


def test_a_missing_optax_fails_to_load_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "optax", None)  # as if not installed
    with pytest.raises(BackendError) as raised:
        resolve("optax")
    assert "optax is not installed" in str(raised.value) and "\n" not in str(raised.value)
