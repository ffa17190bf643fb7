"""benchmarks/speed.py, run small: every implementation steps, the ratio and target tables print, the JSON and
the plot are written (the figures themselves are benchmarks/RESULTS.md's, measured on demand)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parent.parent


def test_speed_harness_runs_and_reports_targets(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "speed.py"),
        "--quick",
        "--sizes",
        "1e3,1e4",
        "--tensors",
        "1,100",
        "--algorithms",
        "lm_rllc,adam",
        "--implementations",
        "torch.optim foreach,torch.optim fused,stepspec eager,stepspec numpy-array-api",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Targets (issues 11–13)" in done.stdout
    # the target's peer (momentum) ran with it; speed targets start at n = 1e6, the others are judged here
    assert "| lm_rllc: per-step overhead ≤ 2× torch.optim foreach momentum | stepspec eager |" in done.stdout
    report = json.loads((tmp_path / "speed-cpu.json").read_text())
    measured = {(r["algorithm"], r["implementation"]) for r in report["rows"]}
    assert {("lm_rllc", "stepspec eager"), ("momentum", "torch.optim fused"), ("adam", "stepspec eager")} <= measured
    assert ("lm_rllc", "stepspec numpy-array-api") in measured
    assert all(r["median_ms"] > 0 for r in report["rows"])
    assert report["copy_bandwidth_gbs"] > 0
    assert all(
        r["copy_bandwidth_fraction"] == r["bandwidth_gbs"] / report["copy_bandwidth_gbs"] for r in report["rows"]
    )
    assert (tmp_path / "speed-cpu.png").stat().st_size > 0


def _row(algo, implementation, n, fraction, device="cuda:0"):
    return {
        "algorithm": algo,
        "implementation": implementation,
        "n": n,
        "tensors": 1,
        "device": device,
        "copy_bandwidth_fraction": fraction,
    }


def test_bandwidth_targets_take_the_worst_cuda_row_from_1e7():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import speed
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    rows = [
        _row("momentum", "stepspec cupy", 10**6, 0.1),  # below BANDWIDTH_FROM: not judged
        _row("momentum", "stepspec cupy", 10**7, 0.75),
        _row("momentum", "stepspec cupy", 10**8, 0.69),
        _row("adam", "stepspec cupy", 10**8, 0.9),
        _row("adam", "stepspec numpy-array-api", 10**8, 0.1, device="cpu"),  # no target on the CPU
    ]
    verdicts = {(v["target"].split(":")[0], v["implementation"]): v for v in speed._bandwidth_verdicts(rows)}
    assert set(verdicts) == {("momentum", "stepspec cupy"), ("adam", "stepspec cupy")}
    assert verdicts["momentum", "stepspec cupy"]["value"] == 0.69 and not verdicts["momentum", "stepspec cupy"]["met"]
    assert verdicts["adam", "stepspec cupy"]["met"]


def test_jax_rows_compile_once(tmp_path):
    """The jax backend's step, its optax transformation and optax's own jitted step run in the same table;
    none recompiles after its first step (one program each: F, G and θ + G; update and apply)."""
    pytest.importorskip("optax")
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "speed.py"),
        "--quick",
        "--sizes",
        "1e3",
        "--tensors",
        "1,100",
        "--algorithms",
        "adam",
        "--implementations",
        "stepspec jax,stepspec optax (jit),optax (jit)",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "speed-cpu.json").read_text())["rows"]
    compilations = {(r["implementation"], r["tensors"]): r["compilations"] for r in rows if r["framework"] == "jax"}
    assert compilations == {
        ("stepspec jax", 1): 1,
        ("stepspec jax", 100): 1,
        ("stepspec optax (jit)", 1): 1,
        ("stepspec optax (jit)", 100): 1,
        ("optax (jit)", 1): 1,
        ("optax (jit)", 100): 1,
    }
