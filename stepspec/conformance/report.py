"""The conformance report (spec/conformance.md#report): one row per backend × algorithm × property, with
status, examples run, the largest deviation seen, wall time and, for failures, the message and the
command that replays the failing example. Written as text and as JSON by the suite itself; the rows
arrive as plain dicts (``RowResult.as_dict``), so results from pytest-xdist workers aggregate the same way.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import SPEC_VERSION, __version__

STATUS_ORDER = ("failed", "xfailed", "passed", "absent", "skipped")
"""A row's status is the first of these among its tests' outcomes: one expected failure (a case of the errors
row, say) makes the row xfailed, so that it never reads as passed."""
TESTED = ("failed", "passed", "xfailed")
SELF_CHECK = "stepspec"
"""The backend column of the suite's own checks (tests that take no backend: stepspec's propagator
builders and notation), reported apart from every backend's rows."""


PROVENANCE = ("date", "python", "machine", "command")
"""The header keys that say when, where and how a report was made (for the conformance matrix); reports
written before them lack them, and readers must accept that."""


def _cpu_name() -> str:
    try:  # platform.processor() is empty or just the architecture on Linux
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name() -> str | None:
    """The first CUDA device, asked only of a torch the run already imported (importing it costs seconds)."""
    torch = sys.modules.get("torch")
    try:
        return torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None
    except RuntimeError:  # a broken CUDA setup must not cost the report
        return None


def _command(argv: list[str]) -> str:
    """The command as typed: ``python -m pytest …`` rather than the path of pytest's __main__.py."""
    program = Path(argv[0])
    words = ["python", "-m", program.parent.name] if program.name == "__main__.py" else [program.name]
    return shlex.join([*words, *argv[1:]])


def provenance(argv: list[str] | None = None) -> dict:
    """Date (ISO 8601, UTC), Python version, machine and command of the run (header keys PROVENANCE)."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "gpu": _gpu_name(),
        },
        "command": _command(sys.argv if argv is None else argv),
    }


@dataclass(frozen=True)
class RowId:
    """A row: backend × algorithm × property. ``backend`` is the ``--backend`` argument (what a re-run
    command needs), ``name`` and ``version`` the backend's own."""

    backend: str
    name: str
    version: str
    dtype: str
    device: str
    algo: str
    prop: str


@dataclass(frozen=True)
class RowResult:
    """The outcome of one test (one pytest item) for its row."""

    row: RowId
    nodeid: str
    outcome: str
    examples: int = 0
    max_deviation: float = 0.0
    max_ratio: float = 0.0
    wall_time: float = 0.0
    message: str = ""
    rerun: str = ""
    case: str = ""  # the test's parameters besides backend and algorithm (an error input), if any

    def as_dict(self) -> dict:
        """Plain Python values, which pytest-xdist can send from a worker (a NumPy float cannot be)."""
        return {k: (float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> RowResult:
        return cls(**{**values, "row": RowId(**values["row"])})


@dataclass
class Row:
    id: RowId
    outcomes: list = field(default_factory=list)
    examples: int = 0
    max_deviation: float = 0.0
    max_ratio: float = 0.0
    wall_time: float = 0.0
    tests: list = field(default_factory=list)
    messages: list = field(default_factory=list)
    reruns: list = field(default_factory=list)
    expected: dict = field(default_factory=dict)  # reason of an expected failure → the cases it covers

    def __getattr__(self, name):  # r.backend, r.algo, … read the row's identity
        if name == "id":
            raise AttributeError(name)
        return getattr(self.id, name)

    @property
    def status(self) -> str:
        for status in STATUS_ORDER:
            if status in self.outcomes:
                return status
        return "skipped"


def _finite(x: float):
    """JSON has no Infinity or NaN: a non-finite figure (a convergence run that never arrived) is null."""
    return x if math.isfinite(x) else None


def compact(x: float) -> str:
    """A figure for the table: three significant digits, exponent form when large or small."""
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return "inf" if x > 0 else str(x)
    return f"{x:.3g}"


class Report:
    def __init__(self, header: dict):
        self.header = header
        self.rows: dict[tuple[str, str, str], Row] = {}

    def add(self, result: dict) -> None:
        r = RowResult.from_dict(result)
        row = self.rows.setdefault((r.row.backend, r.row.algo, r.row.prop), Row(r.row))
        row.outcomes.append(r.outcome)
        row.tests.append(r.nodeid)
        row.examples += r.examples
        row.max_deviation = max(row.max_deviation, r.max_deviation)
        row.max_ratio = max(row.max_ratio, r.max_ratio)
        row.wall_time += r.wall_time
        if r.outcome == "xfailed":
            row.expected.setdefault(r.message, []).append(r.case)
        elif r.message:
            row.messages.append(r.message)
        if r.rerun:
            row.reruns.append(r.rerun)

    # ---------------------------------------------------------------- queries

    def backends(self) -> list[str]:
        return list(dict.fromkeys(r.backend for r in self.rows.values() if r.backend != SELF_CHECK))

    def sorted_rows(self, algorithm_order, backend: str | None = None) -> list[Row]:
        rank = {a: i for i, a in enumerate(algorithm_order)}
        rows = [r for r in self.rows.values() if backend is None or r.backend == backend]
        return sorted(rows, key=lambda r: (r.backend, rank.get(r.algo, len(rank)), r.algo, r.prop))

    def counts(self, backend: str | None = None) -> dict:
        counts = {s: 0 for s in STATUS_ORDER}
        for row in self.rows.values():
            if backend is None or row.backend == backend:
                counts[row.status] += 1
        return counts

    def untested_backends(self) -> list[str]:
        """Backends none of whose selected rows ran: every algorithm absent, or nothing selected."""
        return [b for b in self.backends() if not any(self.counts(b)[s] for s in TESTED)]

    # ---------------------------------------------------------------- text

    def _table(self, rows: list[Row]) -> list[str]:
        head = ("algorithm", "property", "status", "examples", "max deviation", "dev/tol", "time")
        body = [
            (
                r.algo,
                r.prop,
                r.status.upper() if r.status == "failed" else r.status,
                str(r.examples),
                compact(r.max_deviation),
                compact(r.max_ratio) if r.max_ratio else "-",
                f"{r.wall_time:.1f}s",
            )
            for r in rows
        ]
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return lines

    def _backend_text(self, backend: str, algorithm_order) -> list[str]:
        rows = self.sorted_rows(algorithm_order, backend)
        shown = [r for r in rows if r.status != "absent"]
        absent = [r for r in rows if r.status == "absent"]
        first = rows[0]
        counts = ", ".join(f"{n} {s}" for s, n in self.counts(backend).items() if n)
        lines = [
            f"backend {first.name} {first.version} ({backend}; {first.dtype}, {first.device}): "
            f"{len(rows)} rows: {counts}"
        ]
        if shown:
            lines += self._table(shown)
        if absent:
            algos = list(dict.fromkeys(r.algo for r in absent))
            lines.append(
                f"absent, not provided by {first.name}: {', '.join(algos)} "
                f"({len(algos)} algorithms, {len(absent)} rows; listed in the JSON report)"
            )
        expected = [r for r in shown if r.expected]
        if expected:
            lines.append("expected failures (the backend's expected_failures):")
            for r in expected:
                for reason, cases in r.expected.items():
                    named = [c for c in cases if c]
                    which = f" ({len(named)} case{'s' * (len(named) > 1)}: {', '.join(named)})" if named else ""
                    lines.append(f"  {r.algo} {r.prop}{which}: {reason}")
        failures = [r for r in shown if r.status == "failed"]
        if failures:
            lines.append("failures:")
            for r in failures:
                lines.append(f"  {r.algo} {r.prop}: {r.messages[0] if r.messages else '(no message)'}")
                lines += [f"    re-run: {command}" for command in r.reruns[:1]]
        return lines

    def as_text(self, algorithm_order) -> str:
        header = ", ".join(f"{k}={v}" for k, v in self.header.items() if k not in ("backends", *PROVENANCE))
        lines = [f"stepspec conformance ({header})"]
        for backend in self.backends():
            lines += ["", *self._backend_text(backend, algorithm_order)]
        own = self.sorted_rows(algorithm_order, SELF_CHECK)
        if own:
            counts = ", ".join(f"{n} {s}" for s, n in self.counts(SELF_CHECK).items() if n)
            lines += ["", f"stepspec's own checks (its propagator builders; no backend involved): {counts}"]
            lines += [f"  {r.algo} {r.prop}: {r.messages[0]}" for r in own if r.status == "failed" and r.messages]
        return "\n".join(lines)

    # ---------------------------------------------------------------- JSON

    def as_json(self, algorithm_order) -> str:
        def row(r: Row) -> dict:
            return {
                "backend": r.name,
                "backend_version": r.version,
                "backend_argument": r.backend,
                "dtype": r.dtype,
                "device": r.device,
                "algorithm": r.algo,
                "property": r.prop,
                "status": r.status,
                "examples": r.examples,
                "max_deviation": _finite(r.max_deviation),
                "max_deviation_over_tolerance": _finite(r.max_ratio),
                "wall_time_s": round(r.wall_time, 4),
                "seed": self.header.get("seed"),
                "tests": r.tests,
                "messages": r.messages,
                "expected_failures": [{"reason": k, "cases": [c for c in v if c]} for k, v in r.expected.items()],
                "rerun": r.reruns,
            }

        backend_rows = [r for r in self.sorted_rows(algorithm_order) if r.backend != SELF_CHECK]
        return json.dumps(
            {
                "stepspec": __version__,
                "spec": SPEC_VERSION,
                **self.header,
                "summary": {b: self.counts(b) for b in self.backends()},
                "rows": [row(r) for r in backend_rows],
                "self_checks": [row(r) for r in self.sorted_rows(algorithm_order, SELF_CHECK)],
            },
            indent=2,
        )
