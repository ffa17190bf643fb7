"""The jax backend's own contract (spec/backends.md#jax), beyond what the conformance suite checks: float64
stays inside its scope, one compilation serves a run whatever the hyperparameter values, bad input is
rejected on the host before anything is traced, and any pytree of parameters is a structure."""

from __future__ import annotations

import collections

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from stepspec import Observation  # noqa: E402
from stepspec.backends.jax import ALGORITHMS, BACKEND, FLOAT32  # noqa: E402
from stepspec.errors import ObservationError  # noqa: E402


def _halving_rule(M, H, g):
    """A jax-traceable memory rule for ``rllc`` with a hidden step counter (one object: the rule is compiled in)."""
    return 0.5 * M + g[:, None] * jnp.array([1.0, -0.5]), H + 1.0


SETTINGS = {
    "sgd": [{"lr": 0.1}, {"lr": 0.02}],
    "momentum": [{"lr": 0.1, "beta": 0.9}, {"lr": 0.05, "beta": 0.5}],
    "nag": [{"lr": 0.1, "beta": 0.9}, {"lr": 0.05, "beta": 0.0}],
    "adam": [{"lr": 0.1, "weight_decay": 0.1}, {"lr": 0.01, "betas": (0.5, 0.9), "weight_decay": 0.3}],
    "adamw": [{"lr": 0.1}, {"lr": 0.01, "betas": (0.0, 0.5), "eps": 1e-3, "weight_decay": 0.5}],
    "rmsprop": [{"lr": 0.1}, {"lr": 0.01, "alpha": 0.5}],
    "lion": [{"lr": 0.1}, {"lr": 0.01, "betas": (0.5, 0.9)}],
    "rllc": [
        {"rule": _halving_rule, "c1": 0.1, "c2": 0.05, "L0": [0.1, 0.2], "H0": 0.0},
        {"rule": _halving_rule, "c1": 0.02, "c2": 0.0, "L0": [0.3, -0.1], "eps": 0.0, "H0": 2.0},
    ],
    "lm_rllc": [
        {"B": np.diag([0.9, 0.0]), "a": [1.0, 1.0], "c1": 0.1},
        {"B": np.diag([0.5, 0.0]), "a": [0.5, 2.0], "c1": 0.02, "c2": 0.1, "L0": [0.2, 0.1], "eps": 0.0},
    ],
    "linear_memory": [
        {"B": np.diag([0.9, 0.0]), "a": [1.0, 1.0], "L": [0.09, 0.1]},
        {"B": np.diag([0.3, 0.0]), "a": [2.0, 0.5], "L": [0.01, -0.02]},
    ],
    "idbd": [{"alpha0": 0.05, "eta": 0.01}, {"alpha0": 0.2, "eta": 0.0}],
    "idbd_nonlinear": [{"alpha0": 0.05, "eta": 0.01}, {"alpha0": 0.2, "eta": 0.0}],
    "hypergradient": [
        {"base": "sgd", "alpha0": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        {"base": "sgd", "alpha0": 0.0, "hypergradient_lr": 0.0, "momentum": 0.5, "nesterov": True, "weight_decay": 1.0},
    ],
    "trainable_optimizer": [{"lr": 0.1, "lr_A": 0.01}, {"lr": 0.5, "lr_A": 0.0, "lr_b": 0.3, "lr_decay": 0.9}],
    "diagonal_to": [
        {"lr": 0.1, "lr_a": 0.01, "radius": 3.0},
        {"lr": 0.5, "lr_a": 0.02, "lr_b": 0.3, "lr_opt_decay": 0.9, "radius": 0.5},
    ],
    "rank_one_to": [{"lr": 0.1, "lr_uv": 0.01}, {"lr": 0.5, "lr_uv": 0.02, "lr_b": 0.3, "lr_decay": 0.95}],
    "metaoptimize": [
        {"base": "adamw", "meta": "adam", "alpha0": 0.01, "kappa": 0.1},
        {
            "base": "adamw",
            "meta": "adam",
            "alpha0": 0.003,
            "eta": 0.01,
            "gamma": 0.9,
            "rho": 0.5,
            "lam": 0.9,
            "kappa": 0.2,
            "eps": 1e-6,
            "meta_rho": 0.5,
            "meta_kappa": 0.1,
            "meta_eps": 1e-4,
        },
    ],
    "elra": [
        {"crop": 2.0, "warmup_steps": 2, "batch_control": True, "period": 2, "gradient_decay": True},
        {"lr": 0.01, "correction": "none", "max_ratio": 10.0, "retrace": False, "initial_multiple": 2},
    ],
    "elra_lean": [
        {"crop": 2.0, "warmup_steps": 2, "batch_control": True, "period": 2, "weight_decay": 0.999},
        {"lr": 0.01, "correction": "none", "max_ratio": 10.0, "initial_retrace": False, "gradient_decay": True},
    ],
}
"""Two settings per algorithm that differ in every value but not in what is compiled in (weight decay on
or off)."""


def _counted(algo: str):
    """The algorithm's optimizer class with F and G that count how often jax traces them, and the counts."""
    cls, counts = type(ALGORITHMS[algo](**SETTINGS[algo][0])), collections.Counter()

    class Counted(cls):
        @staticmethod
        def step_F(*args):
            counts["F"] += 1
            return cls.step_F(*args)

        @staticmethod
        def step_G(*args):
            counts["G"] += 1
            return cls.step_G(*args)

    def construct(dtype, **hyperparameters):
        public = ALGORITHMS[algo](**hyperparameters, dtype=dtype)
        return Counted(dtype, needs=public.needs, **public.hyperparameters)

    return construct, counts


def _hvp(optimizer) -> dict:
    """For the algorithms that observe ∇²f v: the product 2v (these runs test the program, not a loss's values)."""
    return {"hvp": lambda v: jax.tree_util.tree_map(lambda x: 2 * x, v)} if "hvp" in optimizer.needs else {}


def _loss(optimizer, t: int) -> dict:
    """For the algorithms that observe f: a loss that rises every other step (ELRA's retrace then fires)."""
    return {"loss": 2.0 + (-1.0) ** t} if "loss" in optimizer.needs else {}


def _run(optimizer, backend, theta, steps: int):
    s = optimizer.init(theta)
    for t in range(steps):
        grad = jax.tree_util.tree_map(lambda x, t=t: backend.asarray(np.cos(np.asarray(x) + t)), theta)
        obs = Observation(grad=grad, params=theta, **_hvp(optimizer), **_loss(optimizer, t))
        s = optimizer.F(s, obs)
        theta = jax.tree_util.tree_map(lambda x, d: x + d, theta, optimizer.G(s, obs))
    return s, theta


def test_float64_does_not_leak_into_the_process():
    assert not jax.config.jax_enable_x64, "this test needs a process without x64 enabled"
    for algo in ALGORITHMS:
        theta = [BACKEND.asarray(np.linspace(-1.0, 1.0, 6).reshape(2, 3)), BACKEND.asarray(np.ones(2))]
        s, theta = _run(BACKEND.algorithms[algo](**SETTINGS[algo][0]), BACKEND, theta, 3)
        floats = [leaf for leaf in jax.tree_util.tree_leaves((s, theta)) if jnp.issubdtype(leaf.dtype, jnp.floating)]
        assert all(leaf.dtype == jnp.float64 for leaf in floats), algo
        assert jnp.zeros(1).dtype == jnp.float32, f"{algo} left x64 enabled in the process"
        assert not jax.config.jax_enable_x64, algo


@pytest.mark.parametrize("backend", [BACKEND, FLOAT32], ids=lambda b: b.name)
@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_one_compilation_serves_a_run(algo, backend):
    """Two optimizers with different hyperparameter values, 5 steps each on one structure: F and G are
    traced once each (the values are traced scalars, never compiled in)."""
    construct, counts = _counted(algo)
    theta = [backend.asarray(np.linspace(-1.0, 1.0, 6).reshape(2, 3)), backend.asarray(np.array(0.5))]
    for setting in SETTINGS[algo]:
        _run(construct(backend.dtype, **setting), backend, theta, 5)
    assert counts == {"F": 1, "G": 1}


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_a_nan_gradient_is_rejected_on_the_host_before_tracing(algo):
    construct, counts = _counted(algo)
    optimizer = construct("float64", **SETTINGS[algo][0])
    theta = [BACKEND.asarray(np.zeros((2, 2))), BACKEND.asarray(np.ones(3))]
    s = optimizer.init(theta)
    before = {name: np.array(value) for name, value in s.fields().items()}
    bad = [BACKEND.asarray(np.ones((2, 2))), BACKEND.asarray(np.array([1.0, np.nan, 1.0]))]
    for call in (optimizer.F, optimizer.G):
        with pytest.raises(ObservationError, match="flat index 5") as raised:
            call(s, Observation(grad=bad, params=theta, **_hvp(optimizer), **_loss(optimizer, 0)))
        assert raised.value.param == "grad"
    assert counts == {}, "a compiled step was traced for a rejected observation"
    assert all(np.array_equal(before[name], value) for name, value in s.fields().items())


def test_any_pytree_is_a_parameter_structure():
    """A dict of arrays runs as the flat vector of its leaves in ``tree_leaves`` order; G keeps the dict."""
    shapes = {"w": (2, 3), "b": (3,), "scale": ()}
    rng = np.random.default_rng(0)
    values = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    tree = {name: BACKEND.asarray(value) for name, value in values.items()}
    flat = BACKEND.asarray(np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(values)]))
    optimizer = BACKEND.algorithms["adamw"](lr=0.1)
    s_tree, theta_tree = _run(optimizer, BACKEND, tree, 4)
    assert isinstance(theta_tree, dict) and set(theta_tree) == set(shapes)
    s_flat, flat = _run(optimizer, BACKEND, flat, 4)  # the same gradients: entrywise in θ
    joined = np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(theta_tree)])
    np.testing.assert_allclose(joined, np.asarray(flat), rtol=0, atol=1e-14)
    for name in ("m", "v"):
        np.testing.assert_allclose(np.asarray(getattr(s_tree, name)), np.asarray(getattr(s_flat, name)), atol=1e-14)
    assert s_tree.step == s_flat.step == 4
