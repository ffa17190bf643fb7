"""The `stepspec` command: spec printing, loading backends, verdicts and reproduction of failures, on
partial and broken backends (spec/conformance.md)."""

from __future__ import annotations

import json
import os
import shlex
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


def test_python_m_stepspec_is_the_command():
    done = subprocess.run([sys.executable, "-m", "stepspec", "spec"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "lm_rllc" in done.stdout


def _stepspec(cwd, *args, pythonpath=str(ROOT)):
    env = {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.run(
        [sys.executable, "-m", "stepspec", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _conform(tmp_path, *args, report="report.json"):
    path = tmp_path / report
    done = _stepspec(tmp_path, "conform", *args, "--json", str(path))
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    return done, {(r["algorithm"], r["property"]): r for r in rows}


# --------------------------------------------------------------------------- loading a backend


def test_a_backend_in_a_plain_file_of_the_current_directory_loads(tmp_path):
    (tmp_path / "mybackend.py").write_text(
        "from stepspec.backends.reference import ReferenceBackend\n"
        "from stepspec.reference import sgd\n"
        "BACKEND = ReferenceBackend({'sgd': sgd}, name='mine')\n"
    )
    done = _stepspec(tmp_path, "conform", "--backend", "mybackend:BACKEND", "--max-examples", "2", pythonpath="")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "backend mine" in done.stdout or "backend mybackend:BACKEND" in done.stdout


BAD_MODULES = {
    "raises.py": "raise RuntimeError('cannot find libfoo.so')\n",
    "syntax.py": "def f(:\n    pass\n",
    "imports.py": "import no_such_dependency\n",
    "objects.py": (
        "from stepspec.backends.reference import ReferenceBackend\n"
        "BF16 = ReferenceBackend(name='bf16')\nBF16.dtype = 'bfloat16'\n"
        "UNKNOWN = ReferenceBackend(name='u')\nUNKNOWN.algorithms = {'adamax': print}\n"
        "NOT_CALLABLE = ReferenceBackend(name='n')\nNOT_CALLABLE.algorithms = {'sgd': 3}\n"
        "EMPTY = ReferenceBackend({}, name='empty')\n"
    ),
}


@pytest.mark.parametrize(
    "target, cause",
    [
        ("raises:X", "RuntimeError: cannot find libfoo.so"),
        ("syntax:X", "SyntaxError: invalid syntax"),
        ("imports:X", "No module named 'no_such_dependency'"),
        ("not_here:X", "no module named 'not_here' in the current directory"),
        ("objects:MISSING", "has no attribute 'MISSING'"),
        ("objects:BF16", "dtype 'bfloat16'"),
        ("objects:UNKNOWN", "algorithms stepspec does not specify: adamax"),
        ("objects:NOT_CALLABLE", "constructors that are not callable: sgd"),
        ("objects:EMPTY", "provides no algorithms"),
        ("no_such_backend", "is unknown"),
    ],
)
def test_every_load_failure_is_one_line_and_exit_4(tmp_path, target, cause):
    for name, text in BAD_MODULES.items():
        (tmp_path / name).write_text(text)
    done = _stepspec(tmp_path, "conform", "--backend", target)
    assert done.returncode == 4, (done.returncode, done.stdout[-1000:], done.stderr[-1000:])
    assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"stepspec conform: backend {target!r}") and cause in done.stderr, done.stderr


# --------------------------------------------------------------------------- verdicts


def test_a_partial_backend_reports_absent_algorithms_on_one_line(tmp_path):
    done, rows = _conform(tmp_path, "--backend", "tests.backends_for_cli:PARTIAL", "-k", "test_api or test_errors")
    assert done.returncode == 0, done.stdout[-3000:]
    assert rows["sgd", "errors"]["status"] == "passed"
    assert rows["lm_rllc", "errors"]["status"] == "absent"  # every row stays in the JSON
    text = done.stdout[done.stdout.index("backend partial 0.1.0 (tests.backends_for_cli:PARTIAL; float64, cpu)") :]
    assert "absent, not provided by partial: nag, adam" in text
    assert not any(line.startswith("lm_rllc ") for line in text.splitlines())  # not in the table


def test_nothing_tested_is_not_a_pass(tmp_path):
    done, rows = _conform(tmp_path, "--backend", "tests.backends_for_cli:PARTIAL", "--algorithm", "lm_rllc")
    assert done.returncode == 5 and "nothing was tested on backend" in done.stdout
    assert rows and all(r["status"] == "absent" for r in rows.values())


def test_algorithm_selects_exactly_its_rows(tmp_path):
    everything, all_rows = _conform(tmp_path, "--max-examples", "1", "-j", "2", report="all.json")
    assert everything.returncode == 0, everything.stdout[-3000:]
    done, rows = _conform(tmp_path, "--algorithm", "lm_rllc", "--algorithm", "sgd", "--max-examples", "1")
    assert done.returncode == 0, done.stdout[-3000:]
    assert set(rows) == {key for key in all_rows if key[0] in ("lm_rllc", "sgd")}
    assert "stepspec's own checks" not in done.stdout  # the propagator self-checks belong to no algorithm
    assert len([key for key in rows if key[0] == "lm_rllc"]) >= 20


def test_unknown_algorithm_is_a_usage_error(tmp_path):
    done, _ = _conform(tmp_path, "--algorithm", "adamax")
    assert done.returncode == 4 and "unknown --algorithm adamax" in done.stdout + done.stderr


def test_a_broken_backend_fails_with_a_readable_row(tmp_path):
    done, rows = _conform(tmp_path, "--backend", "tests.backends_for_cli:BROKEN_SGD", "-k", "equivalence")
    assert done.returncode == 1
    failure = rows["sgd", "equivalence_stepwise"]
    assert failure["status"] == "failed" and failure["dtype"] == "float64" and failure["device"] == "cpu"
    assert failure["messages"][0].startswith("[sgd equivalence_stepwise · spec/classical.md#sgd]")
    assert 1 <= failure["examples"] <= 25  # examples up to the first failure; shrinking is not counted
    assert failure["wall_time_s"] >= 0 and failure["rerun"][0].startswith("stepspec conform --backend")
    assert "stepspec: reproduce" in done.stdout


def test_failed_rows_agree_between_text_and_json(tmp_path):
    done, rows = _conform(tmp_path, "--backend", "tests.backends_for_cli:SLOW_SGD", "-k", "convergence")
    assert done.returncode == 1
    row = rows["sgd", "convergence"]
    assert row["status"] == "failed" and row["max_deviation_over_tolerance"] is None  # never arrived: inf
    line = next(line for line in done.stdout.splitlines() if line.startswith("sgd ") and "convergence" in line)
    assert line.split()[2:6] == ["FAILED", str(row["examples"]), "inf", "inf"], line


def test_an_unexpected_exception_is_reported_like_a_failure(tmp_path):
    done, rows = _conform(tmp_path, "--backend", "tests.backends_for_cli:RAISING_SGD", "-k", "equivalence_free_running")
    message = rows["sgd", "equivalence_free_running"]["messages"][0]
    assert message.startswith(
        "[sgd equivalence_free_running · spec/classical.md#sgd] the backend raised ObservationError"
    )
    assert " in G at t=" in message and "; hyperparameters: {'lr': " in message, message


# --------------------------------------------------------------------------- reproduction


@pytest.mark.parametrize("profile", [["--profile", "ci"], ["--profile", "dev", "--seed", "7", "--max-examples", "12"]])
def test_the_printed_rerun_command_replays_the_failing_example(tmp_path, profile):
    """Plant a bug (momentum with dampening), take the re-run command the report prints, run it: the
    same failing example with the same message."""
    backend = "tests.backends_for_cli:DAMPENED_MOMENTUM"
    done, rows = _conform(tmp_path, "--backend", backend, "--algorithm", "momentum", *profile, report="first.json")
    assert done.returncode == 1
    for prop in ("equivalence_stepwise", "equivalence_free_running"):
        first = rows["momentum", prop]
        assert first["status"] == "failed", prop
        words = shlex.split(first["rerun"][0])
        assert words[:2] == ["stepspec", "conform"] and "--replay" in words
        assert all(word in words for word in profile), (profile, words)
        again, replayed = _conform(tmp_path, *words[2:], report=f"{prop}.json")
        assert again.returncode == 1, again.stdout[-2000:]
        assert list(replayed) == [("momentum", prop)]
        assert replayed["momentum", prop]["messages"] == first["messages"][:1]
        assert replayed["momentum", prop]["examples"] == 1


def test_bad_arguments():
    for argv in (["conform", "--profile", "nope"], ["frobnicate"], ["conform", "--replay", "6.0:AAAA"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2


def test_the_plugin_is_inert_in_other_projects(tmp_path):
    """Installing stepspec registers its pytest plugin everywhere: a project without conformance tests
    sees no stepspec output, no backend is resolved and its own hypothesis settings are untouched."""
    (tmp_path / "test_other.py").write_text(
        "import os\n"
        "from hypothesis import given, settings, strategies as st\n"
        "def test_profile():\n"
        "    with open(os.environ['SETTINGS_OUT'], 'w') as out:\n"
        "        out.write(repr(settings.default))\n"
        "@given(st.integers())\n"
        "def test_property(x):\n"
        "    assert isinstance(x, int)\n"
    )

    def run_other_project(*plugin_options, out):
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *plugin_options],
            cwd=tmp_path,
            env={**os.environ, "STEPSPEC_BACKEND": "no_such_backend", "SETTINGS_OUT": str(tmp_path / out)},
            capture_output=True,
            text=True,
            timeout=300,
        )

    # the baseline is hypothesis's own default for this environment (its "ci" profile under CI=true)
    without = run_other_project("-p", "no:stepspec.conformance.plugin", out="without.txt")
    done = run_other_project(out="with.txt")
    assert without.returncode == 0, without.stdout[-2000:]
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "with.txt").read_text() == (tmp_path / "without.txt").read_text()
    assert "stepspec" not in done.stdout


def test_a_torch_backend_with_a_planted_bug_is_rejected_readably(tmp_path):
    """issue 11: a copy of the torch backend with β1 and β2 swapped in Adam's first-moment update fails
    with the spec anchor, the field, both values and the step (hypothesis shrinks to the defaults)."""
    pytest.importorskip("torch")
    done, rows = _conform(tmp_path, "--backend", "tests.backends_for_cli:PLANTED_TORCH", "-k", "equivalence_stepwise")
    assert done.returncode == 1, done.stdout[-2000:]
    message = rows["adam", "equivalence_stepwise"]["messages"][0]
    assert message.startswith("[adam equivalence_stepwise · spec/classical.md#adam] state.m[")
    assert ", reference=" in message and " at t=1" in message, message
    assert rows["adamw", "equivalence_stepwise"]["status"] == "failed"
