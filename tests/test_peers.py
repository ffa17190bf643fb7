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
