"""The `stepspec` command: spec printing, and `conform` on partial and broken backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stepspec import spec
from stepspec.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_spec_prints_the_algorithm_section(capsys):
    assert main(["spec", "lm_rllc"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## `lm_rllc`") and "| hyperparameter |" in out and "## `linear_memory`" not in out


def test_spec_prints_a_page_and_lists_pages(capsys):
    assert main(["spec", "tolerances"]) == 0
    assert "K · u · (T + 1) · κ" in capsys.readouterr().out
    assert main(["spec"]) == 0
    listing = capsys.readouterr().out
    assert all(page.stem in listing for page in spec.spec_dir().glob("*.md"))


def test_spec_unknown_name(capsys):
    assert main(["spec", "no_such_algorithm"]) == 2
    assert "no algorithm or page" in capsys.readouterr().err


def _conform(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "stepspec.cli", "conform", *args, "--json", str(report)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = json.loads(report.read_text())["rows"] if report.exists() else []
    return done, {(r["algorithm"], r["property"]): r for r in rows}


def test_conform_reports_absent_algorithms(tmp_path):
    done, rows = _conform(tmp_path, "--backend", "tests.backends_for_cli:PARTIAL", "-k", "test_api or test_errors")
    assert done.returncode == 0, done.stdout[-3000:]
    assert rows["sgd", "errors"]["status"] == "passed"
    assert rows["lm_rllc", "errors"]["status"] == "absent"
    assert "absent" in done.stdout and "algorithm × property" in done.stdout


def test_conform_fails_on_a_broken_backend(tmp_path):
    done, rows = _conform(tmp_path, "--backend", "tests.backends_for_cli:BROKEN_SGD", "-k", "equivalence and sgd")
    assert done.returncode == 1
    failure = rows["sgd", "equivalence_stepwise"]
    assert failure["status"] == "failed"
    assert failure["messages"][0].startswith("[sgd equivalence_stepwise · spec/classical.md#sgd]")
    assert "stepspec: reproduce" in done.stdout


def test_conform_rejects_an_unknown_backend(tmp_path):
    done, _ = _conform(tmp_path, "--backend", "no_such_backend")
    assert done.returncode != 0 and "unknown backend 'no_such_backend'" in done.stderr + done.stdout


@pytest.mark.parametrize("argv", [["conform", "--profile", "nope"], ["frobnicate"]])
def test_bad_arguments(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
