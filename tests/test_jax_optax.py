"""``stepspec.optax`` and ``stepspec.jax.sweep`` (spec/backends.md#optax): the transformations follow the jax
backend's host steps, compose with optax's chain, clipping and injected schedules under ``jax.jit``, checkpoint
as pytrees, skip non-finite steps; a sweep equals its single runs and compiles once."""

from __future__ import annotations

import collections
import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

import stepspec.optax as stepspec_optax  # noqa: E402
from stepspec import Observation  # noqa: E402
from stepspec.backends.jax import ALGORITHMS, BACKEND  # noqa: E402
from stepspec.backends.jax._core import precision  # noqa: E402
from stepspec.conformance.tolerance import tolerance  # noqa: E402
from stepspec.errors import HyperparameterError  # noqa: E402
from stepspec.jax import sweep  # noqa: E402
from stepspec.reference import propagator  # noqa: E402

CURVATURE = np.array([0.5, 1.0, 1.5, 2.0, 0.8])
STEPS = 6


def loss_fn(params):
    """A convex quadratic over a dict pytree with a matrix leaf, plus a quartic term (non-zero ∇³f)."""
    x = jnp.concatenate([params["w"].reshape(-1), params["b"]])
    return 0.5 * jnp.sum(jnp.asarray(CURVATURE) * (x - 1.0) ** 2) + 0.05 * jnp.sum(x**4)


def theta0():
    return {"w": np.array([[0.3, -0.2], [0.1, 0.4]]), "b": np.array([-0.5])}


def native(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


def leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def host_run(optimizer, steps=STEPS):
    """θ_T by the backend's host F and G, the observation's products from the loss by autodiff."""
    with precision("float64"):
        params = native(theta0())
        state = optimizer.init(params)
        for _ in range(steps):
            value, grad = jax.value_and_grad(loss_fn)(params)

            def hvp(v, params=params):
                return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]

            def third(u, v, params=params):
                return jax.jvp(lambda p: jax.jvp(jax.grad(loss_fn), (p,), (u,))[1], (params,), (v,))[1]

            obs = Observation(grad=grad, params=params, loss=float(value), hvp=hvp, third=third)
            state = optimizer.F(state, obs)
            params = jax.tree_util.tree_map(lambda p, u: p + u, params, optimizer.G(state, obs))
    return params


def optax_run(transformation, steps=STEPS, params=None, state=None):
    """(θ_T, state) by the transformation in a jitted loop body."""

    @jax.jit
    def body(params, state):
        value, grad = jax.value_and_grad(loss_fn)(params)
        updates, state = transformation.update(grad, state, params, value=value, value_fn=loss_fn)
        return optax.apply_updates(params, updates), state

    with precision("float64"):
        params = native(theta0()) if params is None else params
        state = transformation.init(params) if state is None else state
        for _ in range(steps):
            params, state = body(params, state)
    return params, state


SETTINGS = {
    "sgd": {"lr": 0.1},
    "momentum": {"lr": 0.1},
    "nag": {"lr": 0.1},
    "adam": {"lr": 0.05},
    "adamw": {"lr": 0.05},
    "rmsprop": {"lr": 0.01},
    "lion": {"lr": 0.01},
    "lm_rllc": dict(zip(("B", "a"), propagator("M(0.9) ⊕ M(0)")), c1=0.5),
    "linear_memory": dict(zip(("B", "a"), propagator("M(0.9) ⊕ M(0)")), L=np.array([0.05, 0.0])),
    "rllc": {
        "rule": lambda M, H, g: (0.5 * M + g[:, None] * jnp.array([1.0, -0.5]), H + 1.0),
        "c1": 0.1,
        "c2": 0.05,
        "L0": [0.1, 0.2],
        "H0": 0.0,
    },
    "trainable_optimizer": {"lr": 0.1, "lr_A": 1e-3},
    "diagonal_to": {"lr": 0.1, "lr_a": 1e-3},
    "rank_one_to": {"lr": 0.1, "lr_uv": 1e-3},
    "metaoptimize": {"base": "adamw", "meta": "lion", "alpha0": 1e-2, "eta": 1e-3},
}
"""Hyperparameters for a short stable run, where an algorithm's defaults do not give one."""


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_a_transformation_follows_the_host_steps(algo):
    """Under ``jax.jit`` in a training loop, θ_T equals the backend's host F and G run to the float64 policy
    tolerance (the same pure steps; only the products' route differs)."""
    hp = SETTINGS.get(algo, {})
    with precision("float64"):
        expected = host_run(BACKEND.algorithms[algo](**hp))
        got, state = optax_run(getattr(stepspec_optax, algo)(**hp))
    assert int(state.total_skipped) == 0
    bound = tolerance("float64", STEPS, 1.0)
    for g, e in zip(leaves(got), leaves(expected)):
        np.testing.assert_allclose(g, e, rtol=bound, atol=bound)


def test_a_checkpoint_restored_mid_run_continues_bit_for_bit(tmp_path):
    """The state is a pytree of arrays: saved with NumPy mid-run, restored onto a fresh ``init``'s
    structure, the run continues exactly as the uninterrupted one."""
    transformation = stepspec_optax.adam(lr=0.05)
    straight, _ = optax_run(transformation, steps=2 * STEPS)
    halfway, state = optax_run(transformation, steps=STEPS)
    path = tmp_path / "checkpoint.npz"
    np.savez(path, *leaves((halfway, state)))
    with precision("float64"):
        template = (native(theta0()), transformation.init(native(theta0())))
        saved = np.load(path)
        restored = jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(template), [jnp.asarray(saved[f"arr_{i}"]) for i in range(len(saved.files))]
        )
    resumed, _ = optax_run(transformation, steps=STEPS, params=restored[0], state=restored[1])
    for a, b in zip(leaves(resumed), leaves(straight)):
        assert np.array_equal(a, b)


def test_chain_with_clipping_and_an_injected_schedule():
    """``optax.chain(clip, inject_hyperparams(momentum)(lr=schedule))`` trains under jit, and a constant
    schedule injected as a traced value gives exactly the fixed-value trajectory."""
    algo = "momentum"
    fixed, _ = optax_run(getattr(stepspec_optax, algo)(lr=0.05))
    injected, state = optax_run(
        optax.inject_hyperparams(getattr(stepspec_optax, algo), hyperparam_dtype=jnp.float64)(
            lr=optax.constant_schedule(0.05)
        )
    )
    for a, b in zip(leaves(injected), leaves(fixed)):
        np.testing.assert_array_equal(a, b)
    chained = optax.chain(
        optax.clip_by_global_norm(0.5),
        optax.inject_hyperparams(getattr(stepspec_optax, algo))(lr=optax.linear_schedule(0.05, 0.01, 50)),
    )
    with precision("float64"):
        start = float(loss_fn(native(theta0())))
    trained, _ = optax_run(chained, steps=60)
    with precision("float64"):
        assert float(loss_fn(trained)) < 0.5 * start


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_a_non_finite_gradient_is_skipped_inside_jit(algo):
    """A NaN gradient under jit: the update is zero, the state is the one before, the skip is counted; the
    next finite step resets the consecutive count."""
    transformation = getattr(stepspec_optax, algo)(**SETTINGS.get(algo, {}))
    params, state = optax_run(transformation, steps=2)
    with precision("float64"):
        value, grad = jax.value_and_grad(loss_fn)(params)
        bad = jax.tree_util.tree_map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grad)
        update = jax.jit(lambda g, s, p: transformation.update(g, s, p, value=value, value_fn=loss_fn))
        updates, after = update(bad, state, params)
        assert all(np.array_equal(a, b) for a, b in zip(leaves(after.inner), leaves(state.inner)))
        assert all(not np.any(u) for u in leaves(updates))
        assert (int(after.skipped), int(after.total_skipped)) == (1, 1)
        _, resumed = update(grad, after, params)
        assert (int(resumed.skipped), int(resumed.total_skipped)) == (0, 1)


def test_a_transformation_asks_for_what_its_algorithm_observes():
    needs = {algo: ALGORITHMS[algo](**SETTINGS.get(algo, {})).needs for algo in ALGORITHMS}
    for algo, observed in needs.items():
        transformation = getattr(stepspec_optax, algo)(**SETTINGS.get(algo, {}))
        with precision("float64"):
            params = native(theta0())
            grad = jax.grad(loss_fn)(params)
            state = transformation.init(params)
            if "params" in observed:
                with pytest.raises(ValueError, match="params"):
                    transformation.update(grad, state, None, value=1.0, value_fn=loss_fn)
            if "loss" in observed:
                with pytest.raises(ValueError, match="value"):
                    transformation.update(grad, state, params, value_fn=loss_fn)
            if {"hvp", "third"} & observed:
                with pytest.raises(ValueError, match="value_fn"):
                    transformation.update(grad, state, params, value=1.0)


def test_hyperparameters_are_checked_when_the_transformation_is_built():
    with pytest.raises(HyperparameterError) as raised:
        stepspec_optax.adam(lr=-1.0)
    assert raised.value.param == "lr"


# --------------------------------------------------------------------------- sweep


def test_a_sweep_of_64_settings_equals_64_single_runs_in_one_compilation():
    """momentum over an 8 × 8 grid of (lr, β) on the pytree problem: each setting's θ_T equals the host run
    with that setting to the float64 policy tolerance (the same pure step, vmapped; the gradient, traced into
    the scan, may round differently from the eager one), and F is traced once."""
    lrs, betas = np.meshgrid(np.linspace(0.02, 0.3, 8), np.linspace(0.0, 0.9, 8))
    traces = collections.Counter()
    cls = type(ALGORITHMS["momentum"](lr=0.1))
    original = cls.step_F

    def counted(*args):
        traces["F"] += 1
        return original(*args)

    cls.step_F = staticmethod(counted)
    try:
        result = sweep("momentum", {"lr": lrs.ravel(), "beta": betas.ravel()}, loss_fn, theta0(), STEPS)
    finally:
        cls.step_F = staticmethod(original)
    assert traces["F"] == 1 and result.compilations == 1
    assert result.losses.shape == (64, STEPS + 1)
    bound = tolerance("float64", STEPS, 1.0)
    for i, setting in enumerate(result.settings):
        expected = host_run(BACKEND.algorithms["momentum"](**setting))
        for swept, single in zip(leaves(result.params), leaves(expected)):
            np.testing.assert_allclose(swept[i], single, rtol=bound, atol=bound)


def test_a_sweep_refuses_settings_that_change_the_program_or_leave_the_domain():
    with pytest.raises(HyperparameterError) as raised:
        sweep("adam", {"weight_decay": [0.0, 0.1]}, loss_fn, theta0(), 2)
    assert raised.value.param == "weight_decay"
    with pytest.raises(HyperparameterError) as raised:
        sweep("momentum", {"lr": [0.1, -0.1]}, loss_fn, theta0(), 2)
    assert raised.value.param == "lr"
    with pytest.raises(HyperparameterError) as raised:
        sweep("momentum", {"lr": [0.1, 0.2], "beta": [0.5]}, loss_fn, theta0(), 2)
    assert raised.value.param == "grid"


def test_readme_optax_example_runs_and_its_claim_holds():
    """README's "JAX and optax" example: 10 lines besides its imports, and the loss it prints is the one its
    comment states (≈ 0.017 after 300 steps, from 0.48)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", readme.split("\n## JAX and optax\n", 1)[1], re.S)[1]
    body = [line for line in code.splitlines() if line.strip() and not line.startswith(("import ", "from "))]
    assert len(body) <= 10
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert 0.015 < float(out.getvalue().split()[0]) < 0.019
