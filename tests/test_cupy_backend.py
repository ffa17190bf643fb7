"""The cupy backend on a GPU (spec/backends.md#array-api): the conformance suite in both precisions, and every
algorithm's fused passes against the generic array-API path on the same device. Without cupy or without a
CUDA device the module skips, in one line (``tox -e cupy``, ``python -m pytest tests/test_cupy_backend.py -rs``)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from stepspec.backends import array_api
from stepspec.backends.array_api._core import Namespace
from stepspec.conformance.tolerance import tolerance

from .test_array_api_backend import SETTINGS, STEPS, _run


def _gpu_unavailable() -> str | None:
    try:
        import cupy
    except Exception as exc:  # not installed, or a build that cannot load its CUDA libraries
        return f"cupy is not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver
        return f"cupy sees no CUDA device ({type(exc).__name__}: {exc})"
    return None if count > 0 else "cupy sees no CUDA device"


_REASON = _gpu_unavailable()
if _REASON:
    pytest.skip(f"cupy backend not run: {_REASON}", allow_module_level=True)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("algo", sorted(SETTINGS))
def test_fused_passes_equal_the_generic_path_on_the_gpu(algo, dtype):
    import array_api_compat.cupy as compat_cupy
    import cupy

    fused = Namespace(compat_cupy, dtype, kernels=cupy)
    generic = Namespace(compat_cupy, dtype)
    expected = _run(generic, algo, STEPS, fused=False)
    bound = tolerance(dtype, STEPS, 4.0) * max(1.0, float(np.max(np.abs(expected))))
    for use_step in (False, True):
        got = _run(fused, algo, STEPS, use_step)
        assert np.max(np.abs(got - expected)) <= bound, f"step={use_step}"
    assert algo in array_api.ALGORITHMS


@pytest.mark.parametrize("backend", ["cupy", "cupy-float32"])
def test_the_suite_passes_on_cupy(backend, tmp_path):
    """``stepspec conform --backend cupy`` (and float32), its report written next to the other reports
    (``$STEPSPEC_REPORTS``, default the test's temporary folder)."""
    reports = os.environ.get("STEPSPEC_REPORTS", str(tmp_path))
    os.makedirs(reports, exist_ok=True)
    command = [sys.executable, "-m", "stepspec", "conform", "--backend", backend, "-j", "2"]
    command += ["--json", os.path.join(reports, f"report-{backend}.json")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
