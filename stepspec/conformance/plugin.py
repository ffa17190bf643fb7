"""The stepspec pytest plugin (registered through the ``pytest11`` entry point): the backends under test,
the profiles, selection (``--algorithm``, ``--stepspec-test``), replay of a failing example, absent
algorithms, a backend's expected failures, example counting and the backend × algorithm × property report
(spec/conformance.md).

It stays inert in a pytest run that collects no conformance test: it resolves no backend, loads no
hypothesis profile and prints nothing, so installing stepspec does not change anyone else's test run.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.errors import InvalidArgument, UnsatisfiedAssumption

from .. import __version__
from ..backends.protocol import device_of
from ..backends.registry import BackendError, expand, resolve
from .assertions import CURRENT_TEST, ConformanceFailure, Record
from .catalog import CATALOG
from .report import SELF_CHECK, Report, RowId, RowResult, provenance
from .strategies import PRECISION

_QUIET_CHECKS = [
    HealthCheck.too_slow,
    HealthCheck.filter_too_much,
    HealthCheck.data_too_large,
    HealthCheck.function_scoped_fixture,  # `record` and `backend` persist across examples by design
]
_COMMON = dict(deadline=None, print_blob=True, report_multiple_bugs=False, suppress_health_check=_QUIET_CHECKS)
# Built on hypothesis's own defaults, not the active profile: under CI=true hypothesis loads its "ci"
# profile (derandomized), which would otherwise leak into dev and thorough and drop their seeds.
_BASE = settings(settings.get_profile("default"), **_COMMON)
PROFILES = {
    "ci": settings(_BASE, max_examples=25, derandomize=True, database=None),
    "dev": settings(_BASE, max_examples=10),
    "thorough": settings(_BASE, max_examples=1000),
}
"""ci: the default, reproducible (derandomized, no example database); dev: a quick random search; thorough:
1000 random examples per property, on demand (spec/conformance.md#generation)."""
for _name, _profile in PROFILES.items():
    # so `--hypothesis-profile thorough` names them too; never over a profile hypothesis defines itself
    # ("ci" is loaded automatically under a CI environment, and re-registering it would change every
    # project's settings there)
    try:
        settings.get_profile(_name)
    except InvalidArgument:
        settings.register_profile(_name, _profile)
DEFAULT_PROFILE = "ci"

_CONFORMANCE_DIR = Path(__file__).parent
_IDENTITY = pytest.StashKey()  # (backend name, algorithm, property) of a conformance item
_RECORD = pytest.StashKey()
_WALL_TIME = pytest.StashKey()
_BLOB = re.compile(r"@reproduce_failure\('([^']+)', b'([^']+)'\)")
_current_record: Record | None = None


def pytest_addoption(parser):
    group = parser.getgroup("stepspec", "stepspec conformance")
    group.addoption(
        "--backend",
        action="append",
        default=None,
        help="backend under test (repeatable): a built-in name, an entry point, or module:attribute "
        "(default: the ini option stepspec_backends, else $STEPSPEC_BACKEND, else reference)",
    )
    group.addoption(
        "--algorithm",
        action="append",
        default=None,
        metavar="ID",
        help="run only this algorithm's rows (repeatable)",
    )
    group.addoption(
        "--stepspec-test",
        action="append",
        default=None,
        metavar="TEST",
        help="run only this test, FILE.py::FUNCTION[PARAMETERS] as a failure's re-run command names it (repeatable)",
    )
    group.addoption(
        "--stepspec-replay",
        default=None,
        metavar="VERSION:BLOB",
        help="replay exactly this failing example (from a re-run command) in the one selected --stepspec-test",
    )
    group.addoption(
        "--stepspec-profile",
        default=None,
        choices=sorted(PROFILES),
        help="the suite's hypothesis profile (default ci; a --hypothesis-profile naming one of them is honoured)",
    )
    group.addoption("--max-examples", type=int, default=None, help="override the profile's max_examples")
    group.addoption("--stepspec-json", default=None, metavar="PATH", help="write the conformance report as JSON")
    group.addoption("--stepspec-report", action="store_true", help="print the backend × algorithm × property table")
    parser.addini("stepspec_backends", type="args", default=[], help="backends the suite runs against by default")
    parser.addini(
        "stepspec_extra_backend_examples",
        default="",
        help="in a run over several backends, max_examples for every backend after the first (fewer examples "
        "per extra backend × dtype keep the run's time)",
    )


# --------------------------------------------------------------------------- backends and settings


def backend_names(config) -> list[str]:
    """The backends under test, aliases expanded (``torch.optim`` is its three implementations)."""
    names = config.getoption("--backend") or config.getini("stepspec_backends")
    if not names:
        names = [os.environ.get("STEPSPEC_BACKEND", "reference")]
    return expand(names)


_BACKENDS = pytest.StashKey()


def backend_object(config, name: str):
    """The resolved backend ``name``; resolved once, on first use (a load failure is one usage error)."""
    cache = config.stash.setdefault(_BACKENDS, {})
    if name not in cache:
        try:
            cache[name] = resolve(name)
        except BackendError as exc:
            raise pytest.UsageError(f"stepspec: {exc}") from None
    return cache[name]


def profile_name(config) -> str:
    chosen = config.getoption("--stepspec-profile") or config.getoption("hypothesis_profile", default=None)
    return chosen if chosen in PROFILES else DEFAULT_PROFILE


def max_examples(config, backend: str) -> int:
    """The profile's max_examples, ``--max-examples``, or for a backend after the first in a run over
    several, the ini option ``stepspec_extra_backend_examples``."""
    limit = config.getoption("--max-examples") or PROFILES[profile_name(config)].max_examples
    names = backend_names(config)
    extra = config.getini("stepspec_extra_backend_examples")
    if extra and len(names) > 1 and backend != names[0]:
        limit = min(limit, int(extra))
    return limit


def _replay(config):
    """(version, blob) of ``--stepspec-replay``, or None."""
    value = config.getoption("--stepspec-replay")
    if value is None:
        return None
    version, _, blob = value.partition(":")
    if not blob:
        raise pytest.UsageError(
            f"stepspec: --stepspec-replay takes VERSION:BLOB as a re-run command prints it, got {value!r}"
        )
    return version, blob.encode()


# --------------------------------------------------------------------------- collection


def pytest_generate_tests(metafunc):
    """Several backends: every property runs once per backend (the backend fixture is parametrized)."""
    if "backend" in metafunc.fixturenames and _CONFORMANCE_DIR in Path(metafunc.definition.path).parents:
        names = backend_names(metafunc.config)
        if len(names) > 1:
            metafunc.parametrize("backend", names, indirect=True, scope="session", ids=names)


def _backend_of_item(item) -> str:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("backend") or backend_names(item.config)[0]


def selector(item) -> str:
    """FILE.py::FUNCTION[PARAMETERS] without the backend parameter: the same test on any one backend."""
    callspec = getattr(item, "callspec", None)
    ids = callspec.id if callspec is not None else ""
    if callspec is not None and "backend" in callspec.params:
        name = callspec.params["backend"]
        ids = "" if ids == name else ids.removesuffix(f"-{name}").removeprefix(f"{name}-")
    return f"{Path(item.path).name}::{item.originalname}" + (f"[{ids}]" if ids else "")


def case_of(item, algo: str) -> str:
    """The test's parameters besides the backend and the algorithm, as written (``lr=0.0 outside (0, ∞)`` of
    ``test_errors[adam-lr=0.0 outside (0, \\u221e)]``: pytest's escaping undone); empty for a test
    parametrized by the algorithm alone."""
    ids = selector(item).partition("[")[2].removesuffix("]")
    if ids.isascii():
        ids = ids.encode("ascii").decode("unicode_escape")  # pytest escapes ids with unicode_escape
    return "" if ids in ("", algo) else ids.removeprefix(f"{algo}-")


def expected_failure(backend, algo: str, prop: str, case: str) -> str | None:
    """The reason ``backend`` gives, in its optional ``expected_failures`` table, for row (algo, prop), or for
    one case of it, to fail (spec/conformance.md#backends); None when it is expected to pass."""
    table = getattr(backend, "expected_failures", None) or {}
    return table.get((algo, prop, case)) or table.get((algo, prop))


def _identity(item):
    params = getattr(getattr(item, "callspec", None), "params", {})
    marker = item.get_closest_marker("algo")
    algo = params.get("algo") or (marker.args[0] if marker else "suite")
    backend = _backend_of_item(item) if "backend" in item.fixturenames else SELF_CHECK
    return backend, algo, item.originalname.removeprefix("test_")


def _count_examples(inner):
    """Delimit every example of a hypothesis property for its Record (rejected ones, by assume, are not
    examples)."""

    @functools.wraps(inner)
    def counted(*args, **kwargs):
        record = _current_record
        if record is not None:
            record.start_example()
        try:
            result = inner(*args, **kwargs)
        except UnsatisfiedAssumption:
            raise
        except BaseException:
            if record is not None:
                record.end_example(failed=True)
            raise
        if record is not None:
            record.end_example(failed=False)
        return result

    counted.stepspec_counted = True
    return counted


def pytest_collection_modifyitems(config, items):
    conformance = [i for i in items if isinstance(i, pytest.Function) and _CONFORMANCE_DIR in Path(i.path).parents]
    if not conformance:
        return
    names = backend_names(config)
    for name in names:
        backend_object(config, name)  # a backend that cannot be loaded stops the run here, in one line
    algorithms = config.getoption("--algorithm")
    unknown = sorted(set(algorithms or ()) - set(CATALOG))
    if unknown:
        raise pytest.UsageError(f"stepspec: unknown --algorithm {', '.join(unknown)}; known: {', '.join(CATALOG)}")
    tests = config.getoption("--stepspec-test")
    keep, dropped = [], []
    for item in items:
        if item not in conformance:
            keep.append(item)
            continue
        item.stash[_IDENTITY] = backend, algo, prop = _identity(item)
        if tests:
            selected = selector(item) in tests
        elif backend == SELF_CHECK:  # they test stepspec's own code: run with the reference only
            selected = "reference" in names and not algorithms
        else:
            selected = not algorithms or algo in algorithms
        if item.get_closest_marker("structured") and not getattr(backend_object(config, backend), "structured", False):
            selected = False  # a property of parameter structures, for backends that declare them
        if selected and backend != SELF_CHECK:
            reason = expected_failure(backend_object(config, backend), algo, prop, case_of(item, algo))
            if reason:  # strict: an expected failure that passes is stale, and fails the run
                item.add_marker(pytest.mark.xfail(reason=reason, raises=ConformanceFailure, strict=True))
        (keep if selected else dropped).append(item)
        hypothesis = getattr(item.function, "hypothesis", None)
        if hypothesis is not None:
            # The suite's profile, bound here rather than at import so that it touches nothing but the suite
            # (hypothesis' pytest plugin reads the health checks from it); per backend at each call below.
            item.function._hypothesis_internal_use_settings = PROFILES[profile_name(config)]
            if not getattr(hypothesis.inner_test, "stepspec_counted", False):
                hypothesis.inner_test = _count_examples(hypothesis.inner_test)
    if tests:
        missing = sorted(set(tests) - {selector(i) for i in keep if _IDENTITY in i.stash})
        if missing:
            raise pytest.UsageError(f"stepspec: no conformance test {', '.join(missing)}")
    if _replay(config) is not None and len([i for i in keep if _IDENTITY in i.stash]) != 1:
        raise pytest.UsageError("stepspec: --stepspec-replay replays one test: select exactly one with --stepspec-test")
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_report_collectionfinish(config, start_path, items):
    if not any(_IDENTITY in i.stash for i in items):
        return []
    described = []
    for name in backend_names(config):
        b = backend_object(config, name)
        described.append(f"{b.name} {b.version} ({b.dtype}, {device_of(b)}, max_examples={max_examples(config, name)})")
    return [f"stepspec {__version__}: profile {profile_name(config)}; backends " + ", ".join(described)]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def backend(request):
    """The backend under test (``--backend``; one per parametrization when there are several)."""
    name = getattr(request, "param", None) or backend_names(request.config)[0]
    return backend_object(request.config, name)


@pytest.fixture
def record(request):
    """Where assertions report deviations; the report reads it after the test."""
    return request.node.stash.setdefault(_RECORD, Record())


# --------------------------------------------------------------------------- running


def pytest_runtest_setup(item):
    if _IDENTITY not in item.stash:
        return
    backend_name, algo, _ = item.stash[_IDENTITY]
    if backend_name == SELF_CHECK:
        return
    backend = backend_object(item.config, backend_name)
    if algo in CATALOG and algo not in backend.algorithms:
        pytest.skip(f"absent: {algo} not provided by backend {backend.name}")


def _settings(item):
    backend_name = item.stash[_IDENTITY][0]
    if backend_name == SELF_CHECK:
        backend_name = backend_names(item.config)[0]
    return settings(PROFILES[profile_name(item.config)], max_examples=max_examples(item.config, backend_name))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    global _current_record
    if _IDENTITY not in item.stash:
        return (yield)
    _current_record = item.stash.setdefault(_RECORD, Record())
    test = item.function
    is_property = hasattr(test, "hypothesis")
    if is_property:
        bound = test._hypothesis_internal_use_settings
        test._hypothesis_internal_use_settings = _settings(item)
        test._hypothesis_internal_use_reproduce_failure = _replay(item.config)
    backend_name = item.stash[_IDENTITY][0]
    dtype = backend_object(item.config, backend_name).dtype if backend_name != SELF_CHECK else "float64"
    token, precision = CURRENT_TEST.set(item.stash[_IDENTITY][1:]), PRECISION.set(dtype)
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        item.stash[_WALL_TIME] = time.perf_counter() - started
        CURRENT_TEST.reset(token)
        PRECISION.reset(precision)
        _current_record = None
        if is_property:
            test._hypothesis_internal_use_settings = bound
            test._hypothesis_internal_use_reproduce_failure = None


def _first_line(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def _blob(exc: BaseException) -> str | None:
    text = "\n".join([str(exc), *getattr(exc, "__notes__", ())])
    match = _BLOB.search(text)
    return f"{match[1]}:{match[2]}" if match else None


def rerun_command(item, blob: str | None) -> str:
    """The command that re-runs exactly this test on its backend, replaying the failing example."""
    backend = item.stash[_IDENTITY][0]
    if backend == SELF_CHECK:
        backend = "reference"
    words = ["stepspec", "conform", "--backend", backend, "--test", selector(item)]
    words += ["--profile", profile_name(item.config), "--max-examples", str(max_examples(item.config, backend))]
    seed = item.config.getoption("hypothesis_seed", default=None)
    if seed is not None and not PROFILES[profile_name(item.config)].derandomize:
        words += ["--seed", str(seed)]
    if blob:
        words += ["--replay", blob]
    return shlex.join(words)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if _IDENTITY not in item.stash:
        return report
    if not (report.when == "call" or (report.when == "setup" and not report.passed)):
        return report
    backend_name, algo, prop = item.stash[_IDENTITY]
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        outcome = "xfailed" if hasattr(report, "wasxfail") else ("absent" if "absent:" in reason else "skipped")
    else:
        outcome = report.outcome
    examples, max_deviation, max_ratio = item.stash.get(_RECORD, Record()).summary()
    message = rerun = ""
    if report.failed and call.excinfo is not None:
        message = _first_line(call.excinfo.value)
        replayed = item.config.getoption("--stepspec-replay")  # a replay reports no new blob: pass it on
        rerun = rerun_command(item, _blob(call.excinfo.value) or replayed)
        report.sections.append(("stepspec: reproduce", rerun))
    elif report.failed:  # an expected failure that passed (strict xfail): the report says so
        message = str(report.longrepr).splitlines()[0]
    elif outcome == "xfailed":
        message = report.wasxfail
    if backend_name == SELF_CHECK:
        name, version, dtype, device = SELF_CHECK, __version__, "-", "-"
    else:
        b = backend_object(item.config, backend_name)
        name, version, dtype, device = b.name, str(b.version), b.dtype, device_of(b)
    result = RowResult(
        row=RowId(backend_name, name, version, dtype, device, algo, prop),
        nodeid=item.nodeid,
        outcome=outcome,
        examples=int(examples) if outcome in ("passed", "failed", "xfailed") else 0,
        max_deviation=float(max_deviation),
        max_ratio=float(max_ratio),
        wall_time=item.stash.get(_WALL_TIME, 0.0),
        message=message,
        rerun=rerun,
        case=case_of(item, algo),
    )
    report.user_properties.append(("stepspec", result.as_dict()))  # travels from pytest-xdist workers
    return report


# --------------------------------------------------------------------------- the report (controller side)


class ReportCollector:
    """Gathers the rows on the controller (the pytest-xdist controller, or the one process), writes the
    table and the JSON, and fails a run in which a backend was not tested at all."""

    def __init__(self, config):
        self.config = config
        profile = PROFILES[profile_name(config)]
        self.report = Report(
            {
                "profile": profile_name(config),
                "derandomized": profile.derandomize,
                "seed": None if profile.derandomize else config.getoption("hypothesis_seed", default=None),
                "backends": backend_names(config),
                **provenance(),
            }
        )

    def pytest_runtest_logreport(self, report):
        for key, value in getattr(report, "user_properties", ()):
            if key == "stepspec":
                self.report.add(value)

    def pytest_sessionfinish(self, session, exitstatus):
        if self.report.rows and self.report.untested_backends() and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED

    def pytest_terminal_summary(self, terminalreporter):
        if not self.report.rows:
            return
        order = list(CATALOG)
        if self.config.getoption("--stepspec-report"):
            terminalreporter.write_sep("=", "stepspec conformance report")
            terminalreporter.write_line(self.report.as_text(order))
        for name in self.report.untested_backends():
            terminalreporter.write_line(
                f"stepspec: nothing was tested on backend {name}: it provides none of the selected algorithms",
                red=True,
            )
        path = self.config.getoption("--stepspec-json")
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(self.report.as_json(order), encoding="utf-8")
            terminalreporter.write_line(f"stepspec: report written to {path}")


def pytest_configure(config):
    config.addinivalue_line("markers", "algo(name): the algorithm a conformance test checks, for the report")
    config.addinivalue_line("markers", "structured: a property of backends that declare structured = True")
    # Properties deliberately use rates beyond the TO step-size bound (spec/trainable_optimizer.md)
    config.addinivalue_line("filterwarnings", "ignore::stepspec.errors.StepSizeWarning")
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(ReportCollector(config), "stepspec-report")
