"""The array-API backend's own contract (spec/backends.md#array-api), beyond what the conformance suite
checks: every algorithm is there; ``step`` (F and θ + G, fused) equals F then G; the cupy path — every
elementwise pass compiled by ``fuse``, its scalars passed in the working dtype — runs on the CPU through an
emulation of cupy's kernel module that offers only the elementwise functions a fused kernel may call; a
rejected step changes nothing; the cupy backend refuses cleanly without a GPU."""

from __future__ import annotations

import types

import numpy as np
import pytest

array_api_compat = pytest.importorskip("array_api_compat")
array_api_strict = pytest.importorskip("array_api_strict")
import array_api_compat.numpy as compat_numpy  # noqa: E402

from stepspec import Observation, reference  # noqa: E402
from stepspec.backends import array_api  # noqa: E402
from stepspec.backends.array_api._core import Namespace  # noqa: E402
from stepspec.backends.registry import BackendError, resolve  # noqa: E402
from stepspec.conformance.tolerance import tolerance  # noqa: E402
from stepspec.errors import ObservationError  # noqa: E402


def _halving_rule(M, H, g):
    """A memory rule for ``rllc`` on the namespace's own arrays, with a hidden step counter."""
    xp = array_api_compat.array_namespace(M)
    return 0.5 * M + g[:, None] * xp.asarray([1.0, -0.5], dtype=M.dtype), H + 1.0


SETTINGS = {
    "sgd": {"lr": 0.1},
    "momentum": {"lr": 0.1, "beta": 0.9},
    "nag": {"lr": 0.1, "beta": 0.9},
    "adam": {"lr": 0.1, "weight_decay": 0.1},
    "adamw": {"lr": 0.01, "betas": (0.0, 0.5), "eps": 1e-3, "weight_decay": 0.5},
    "rmsprop": {"lr": 0.01, "alpha": 0.5, "weight_decay": 0.1},
    "lion": {"lr": 0.01, "betas": (0.5, 0.9), "weight_decay": 0.1},
    "rllc": {"rule": _halving_rule, "c1": 0.1, "c2": 0.05, "L0": [0.1, 0.2], "H0": 0.0},
    "lm_rllc": {"B": np.diag([0.5, 0.0]), "a": [0.5, 2.0], "c1": 0.02, "c2": 0.1, "L0": [0.2, 0.1]},
    "linear_memory": {"B": np.diag([0.9, 0.0]), "a": [1.0, 1.0], "L": [0.09, 0.1]},
    "idbd": {"alpha0": 0.05, "eta": 0.01},
    "idbd_nonlinear": {"alpha0": 0.05, "eta": 0.01},
    "hypergradient": {"base": "sgd", "alpha0": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    "trainable_optimizer": {"lr": 0.1, "lr_A": 0.01},
    "diagonal_to": {"lr": 0.1, "lr_a": 0.01, "radius": 3.0},
    "rank_one_to": {"lr": 0.1, "lr_uv": 0.01},
    "metaoptimize": {"base": "adamw", "meta": "adam", "alpha0": 0.01, "kappa": 0.1},
    "elra": {"crop": 2.0, "warmup_steps": 2, "batch_control": True, "period": 2, "gradient_decay": True},
    "elra_lean": {"crop": 2.0, "warmup_steps": 2, "batch_control": True, "period": 2, "weight_decay": 0.999},
}
"""A setting per algorithm that exercises its optional terms (weight decay, c2, meta-steps, controls)."""

SHAPES = [(3,), (2, 2), (1,)]
CURVATURE = np.linspace(0.5, 2.0, 8)
"""f(θ) = ½ Σ d_i (θ_i − 1)², on a structure of three parameters (n = 8)."""

FUSABLE = ("sqrt", "abs", "sign", "exp", "log", "where", "maximum", "minimum", "square", "copysign")
"""The functions a pass may call: elementwise ufuncs that ``cupy.fuse`` compiles (spec/backends.md#array-api)."""


class EmulatedKernels(types.SimpleNamespace):
    """cupy's kernel module as a fused pass sees it, on NumPy: only ``FUSABLE`` functions, and a ``fuse``
    that records each compiled pass and checks what it is called with — arrays of the working dtype and
    scalars of it, never a Python float (which would make a cupy kernel compute in float64)."""

    def __init__(self, dtype: str):
        super().__init__(**{name: getattr(np, name) for name in FUSABLE})
        self.dtype, self.compiled, self.calls = np.dtype(dtype), [], 0

    def fuse(self, function):
        self.compiled.append(function)

        def kernel(*args):
            self.calls += 1
            for a in args:
                assert type(a) not in (float, int), f"a Python scalar {a!r} reached a fused pass"
                assert np.asarray(a).dtype == self.dtype, f"a {np.asarray(a).dtype} argument in a {self.dtype} pass"
            results = function(*args)
            for r in results if isinstance(results, tuple) else (results,):
                assert np.asarray(r).dtype == self.dtype, f"a pass returned {np.asarray(r).dtype} in {self.dtype}"
            return results

        return kernel


def _namespaces(dtype: str) -> dict:
    return {
        "numpy": Namespace(compat_numpy, dtype),
        "strict": Namespace(array_api_strict, dtype),
        "emulated-cupy": Namespace(compat_numpy, dtype, kernels=EmulatedKernels(dtype)),
    }


def _observation(ns: Namespace, theta: list, needs) -> Observation:
    flat = np.concatenate([ns.to_numpy(p).reshape(-1) for p in theta]).astype(np.float64)
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in SHAPES])

    def split(vector):
        return [
            ns.asarray(np.asarray(vector[a:b], dtype=ns.dtype).reshape(s))
            for a, b, s in zip(offsets, offsets[1:], SHAPES)
        ]

    def join(parts):
        return np.concatenate([ns.to_numpy(p).reshape(-1) for p in parts]).astype(np.float64)

    return Observation(
        grad=split(CURVATURE * (flat - 1.0)),
        params=split(flat) if "params" in needs else None,
        loss=float(0.5 * np.sum(CURVATURE * (flat - 1.0) ** 2)) if "loss" in needs else None,
        hvp=(lambda v: split(CURVATURE * join(v))) if "hvp" in needs else None,
        third=(lambda u, v: split(0.0 * join(u))) if "third" in needs else None,
    )


def _initial(ns: Namespace) -> list:
    rng = np.random.default_rng(0)
    return [ns.asarray(rng.normal(size=s).astype(ns.dtype)) for s in SHAPES]


def _run(ns: Namespace, algo: str, steps: int, fused: bool) -> np.ndarray:
    optimizer = array_api.ALGORITHMS[algo](**SETTINGS[algo], ns=ns)
    theta = _initial(ns)
    state = optimizer.init(theta)
    for _ in range(steps):
        obs = _observation(ns, theta, optimizer.needs)
        if fused:
            state, theta = optimizer.step(state, obs, theta)
        else:
            state = optimizer.F(state, obs)
            theta = [p + d for p, d in zip(theta, optimizer.G(state, obs))]
    return np.concatenate([ns.to_numpy(p).reshape(-1) for p in theta]).astype(np.float64)


def test_every_algorithm_of_the_spec_is_there():
    assert sorted(array_api.ALGORITHMS) == sorted(reference.ALGORITHMS)
    assert sorted(SETTINGS) == sorted(reference.ALGORITHMS)


STEPS = 6


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("algo", sorted(SETTINGS))
def test_step_and_every_namespace_agree_with_F_then_G(algo, dtype):
    """``step`` equals F then θ + G, and the strict namespace and the cupy emulation equal NumPy's run,
    to the float64/float32 tolerance of a run of STEPS steps."""
    if algo not in array_api.ALGORITHMS:
        pytest.skip(f"{algo} is not in the array-API backend")
    namespaces = _namespaces(dtype)
    expected = _run(namespaces["numpy"], algo, STEPS, fused=False)
    bound = tolerance(dtype, STEPS, 4.0)
    scale = max(1.0, float(np.max(np.abs(expected))))
    for label, ns in namespaces.items():
        for fused in (False, True):
            got = _run(ns, algo, STEPS, fused)
            assert np.max(np.abs(got - expected)) <= bound * scale, f"{label}, fused={fused}"


@pytest.mark.parametrize("algo", sorted(SETTINGS))
def test_under_cupy_every_step_runs_compiled_passes(algo):
    """Under cupy's kernel module every step calls fused passes (each array read and written once per
    pass), and the passes use only what a fused kernel can compile (``FUSABLE``)."""
    if algo not in array_api.ALGORITHMS:
        pytest.skip(f"{algo} is not in the array-API backend")
    kernels = EmulatedKernels("float32")
    ns = Namespace(compat_numpy, "float32", kernels=kernels)
    _run(ns, algo, 3, fused=True)
    assert kernels.compiled and kernels.calls >= 3


def test_the_emulation_catches_a_python_float_in_a_pass():
    """The check the emulation exists for can fail: a pass given a Python float is refused."""
    kernels = EmulatedKernels("float32")
    kernel = kernels.fuse(lambda x, s: s * x)
    with pytest.raises(AssertionError, match="Python scalar"):
        kernel(np.ones(3, np.float32), 0.5)


def test_the_cupy_path_passes_scalars_in_the_working_dtype():
    ns = Namespace(compat_numpy, "float32", kernels=EmulatedKernels("float32"))
    scaled = ns.fused(lambda xp: lambda x, s: s * x)
    assert scaled(np.ones(3, np.float32), 0.5).dtype == np.float32


@pytest.mark.parametrize("algo", sorted(SETTINGS))
def test_a_rejected_step_changes_nothing(algo):
    """A NaN in the gradient is an ObservationError naming ``grad`` before any work: state and θ stay."""
    if algo not in array_api.ALGORITHMS:
        pytest.skip(f"{algo} is not in the array-API backend")
    ns = Namespace(array_api_strict, "float64")
    optimizer = array_api.ALGORITHMS[algo](**SETTINGS[algo], ns=ns)
    theta = _initial(ns)
    state, theta = optimizer.step(optimizer.init(theta), _observation(ns, theta, optimizer.needs), theta)
    before = {k: ns.to_numpy(v) if hasattr(v, "shape") else v for k, v in state.fields().items()}
    obs = _observation(ns, theta, optimizer.needs)
    grad = [ns.to_numpy(g).copy() for g in obs.grad]
    grad[1][0, 0] = np.nan
    bad = Observation(
        grad=[ns.asarray(g) for g in grad], params=obs.params, loss=obs.loss, hvp=obs.hvp, third=obs.third
    )
    with pytest.raises(ObservationError) as caught:
        optimizer.step(state, bad, theta)
    assert caught.value.param == "grad"
    after = {k: ns.to_numpy(v) if hasattr(v, "shape") else v for k, v in state.fields().items()}
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(np.asarray(before[k]), np.asarray(after[k]), err_msg=k)


def test_the_strict_namespace_rejects_what_the_standard_lacks():
    """Why the strict backend is in the default run: a call outside the standard fails there."""
    x = array_api_strict.asarray([1.0, 2.0])
    with pytest.raises(AttributeError):
        array_api_strict.clip_by_norm(x)  # not in the standard
    with pytest.raises(TypeError):
        x + array_api_strict.asarray([1, 2])  # no silent int/float promotion


@pytest.mark.parametrize(
    "name", ["numpy-array-api", "numpy-array-api-float32", "array-api-strict", "array-api-strict-float32"]
)
def test_backends_resolve(name):
    backend = resolve(name)
    assert backend.name == name and backend.dtype == ("float32" if name.endswith("float32") else "float64")
    assert sorted(backend.algorithms) == sorted(array_api.ALGORITHMS)


def test_cupy_without_a_gpu_is_one_clear_line():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a GPU is present: tests/test_cupy_backend.py runs the cupy backend")
    except Exception:  # no cupy, or cupy without a CUDA driver
        pass
    with pytest.raises(BackendError) as caught:
        resolve("cupy")
    message = str(caught.value)
    assert message.startswith("backend 'cupy' could not be loaded") and "\n" not in message


def test_readme_example_runs():
    """README's "Array API and CuPy" example: one fused step of LM-RLLC on a structure of strict arrays."""
    import contextlib
    import io
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "strict_backend" in block]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert "array_api_strict.float64" in out.getvalue()
