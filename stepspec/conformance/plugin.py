"""The stepspec pytest plugin (registered through the ``pytest11`` entry point): the ``--backend``
option and fixture, the hypothesis profiles, absent-algorithm skips, example counting and the
algorithm × property report (spec/conformance.md)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.errors import UnsatisfiedAssumption

from .. import __version__
from ..backends import resolve
from .assertions import Record
from .catalog import CATALOG
from .report import Report

# `record` and `backend` are meant to persist across examples: the record accumulates the largest
# deviation over all of them.
_QUIET_CHECKS = [
    HealthCheck.too_slow,
    HealthCheck.filter_too_much,
    HealthCheck.data_too_large,
    HealthCheck.function_scoped_fixture,
]
settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_QUIET_CHECKS,
)
settings.register_profile("dev", max_examples=10, deadline=None, suppress_health_check=_QUIET_CHECKS)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, print_blob=True, suppress_health_check=_QUIET_CHECKS
)
DEFAULT_PROFILE = "ci"

_BACKEND = pytest.StashKey()
_REPORT = pytest.StashKey()
_IDENTITY = pytest.StashKey()  # (algo, property) of a conformance item
_RECORD = pytest.StashKey()
_CONFORMANCE_DIR = Path(__file__).parent
_current_record: Record | None = None


def pytest_addoption(parser):
    group = parser.getgroup("stepspec", "stepspec conformance")
    group.addoption(
        "--backend",
        default=os.environ.get("STEPSPEC_BACKEND", "reference"),
        help="backend under test: a built-in name, an entry point, or package.module:attribute "
        "(default: $STEPSPEC_BACKEND or reference)",
    )
    group.addoption("--max-examples", type=int, default=None, help="override the hypothesis profile's max_examples")
    group.addoption("--stepspec-json", default=None, metavar="PATH", help="write the conformance report as JSON")
    group.addoption("--stepspec-report", action="store_true", help="print the algorithm × property table")


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    if not config.getoption("hypothesis_profile", default=None):
        settings.load_profile(DEFAULT_PROFILE)
    limit = config.getoption("--max-examples")
    if limit is not None:
        settings.register_profile("stepspec-max-examples", parent=settings.default, max_examples=limit)
        settings.load_profile("stepspec-max-examples")
    config.addinivalue_line("markers", "algo(name): the algorithm a conformance test checks, for the report")
    # Properties deliberately use rates beyond the TO step-size bound (spec/trainable_optimizer.md)
    config.addinivalue_line("filterwarnings", "ignore::stepspec.errors.StepSizeWarning")
    config.stash[_REPORT] = Report({})


def backend_of(config):
    if _BACKEND not in config.stash:
        try:
            config.stash[_BACKEND] = resolve(config.getoption("--backend"))
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    return config.stash[_BACKEND]


def pytest_sessionstart(session):
    backend = backend_of(session.config)
    session.config.stash[_REPORT].header = {
        "backend": backend.name,
        "backend_version": str(backend.version),
        "dtype": backend.dtype,
        "profile": settings.get_current_profile_name(),
        "max_examples": settings.default.max_examples,
    }


def pytest_report_header(config):
    backend = backend_of(config)
    env = {k: v for k, v in os.environ.items() if k.startswith("STEPSPEC_")}
    return [
        f"stepspec {__version__}: backend {backend.name} {backend.version} ({backend.dtype}), hypothesis profile "
        f"{settings.get_current_profile_name()} (max_examples={settings.default.max_examples})",
        *(f"  {k}={v}" for k, v in sorted(env.items())),
    ]


@pytest.fixture(scope="session")
def backend(request):
    """The backend under test (``--backend``)."""
    return backend_of(request.config)


@pytest.fixture
def record(request):
    """Where assertions report deviations; the report reads it after the test."""
    return request.node.stash.setdefault(_RECORD, Record())


# --------------------------------------------------------------------------- collection


def _count_examples(inner):
    """Count the examples a hypothesis test ran to the end (rejected ones, by assume, are not counted)."""

    @functools.wraps(inner)
    def counted(*args, **kwargs):
        try:
            result = inner(*args, **kwargs)
        except UnsatisfiedAssumption:
            raise
        except BaseException:
            if _current_record is not None:
                _current_record.examples += 1
            raise
        if _current_record is not None:
            _current_record.examples += 1
        return result

    counted.stepspec_counted = True
    return counted


def _identity(item):
    params = getattr(getattr(item, "callspec", None), "params", {})
    marker = item.get_closest_marker("algo")
    algo = params.get("algo") or (marker.args[0] if marker else "suite")
    return algo, item.originalname.removeprefix("test_")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not isinstance(item, pytest.Function) or _CONFORMANCE_DIR not in Path(item.path).parents:
            continue
        item.stash[_IDENTITY] = _identity(item)
        hypothesis = getattr(item.function, "hypothesis", None)
        if hypothesis is not None and not getattr(hypothesis.inner_test, "stepspec_counted", False):
            hypothesis.inner_test = _count_examples(hypothesis.inner_test)


def pytest_runtest_setup(item):
    if _IDENTITY not in item.stash:
        return
    algo = item.stash[_IDENTITY][0]
    backend = backend_of(item.config)
    if algo in CATALOG and algo not in backend.algorithms:
        pytest.skip(f"absent: {algo} not provided by backend {backend.name}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    global _current_record
    _current_record = item.stash.setdefault(_RECORD, Record())
    try:
        return (yield)
    finally:
        _current_record = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if _IDENTITY not in item.stash:
        return report
    algo, prop = item.stash[_IDENTITY]
    rec = item.stash.get(_RECORD, None)
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            outcome = "xfailed" if hasattr(report, "wasxfail") else ("absent" if "absent:" in reason else "skipped")
        else:
            outcome = report.outcome
            if rec is not None and rec.examples == 0 and outcome == "passed":
                rec.examples = 1  # a test without hypothesis is one example
        message = ""
        if report.failed:
            message = str(call.excinfo.value).splitlines()[0] if call.excinfo else ""
            report.sections.append(
                (
                    "stepspec: reproduce",
                    f"python -m pytest '{item.path}::{item.name}' -p stepspec.conformance.plugin "
                    f"--backend {item.config.getoption('--backend')}",
                )
            )
        item.config.stash[_REPORT].add(algo, prop, item.nodeid, outcome, rec, message)
    return report


def pytest_terminal_summary(terminalreporter, config):
    report = config.stash.get(_REPORT, None)
    if report is None or not report.rows:
        return
    order = list(CATALOG)
    if config.getoption("--stepspec-report"):
        terminalreporter.write_sep("=", "stepspec conformance report")
        terminalreporter.write_line(report.as_text(order))
    path = config.getoption("--stepspec-json")
    if path:
        Path(path).write_text(report.as_json(order), encoding="utf-8")
        terminalreporter.write_line(f"stepspec: report written to {path}")
