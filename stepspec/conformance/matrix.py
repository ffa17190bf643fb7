"""The conformance matrix (spec/conformance.md#report): algorithm × backend, built from the JSON reports the
suite writes (``--stepspec-json``, ``stepspec conform --json``), as Markdown (the site's page) or as a
standalone HTML page (``stepspec report``). A report over several backends gives one column per backend;
reports of the peers (torch.optim, optax, lion-pytorch) add theirs. Each cell counts its rows' verdicts,
gives their largest deviation over tolerance and links to its rows, listed below the table.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import StepspecError
from ..reference import ALGORITHMS
from .report import TESTED

NOT_RECORDED = "not recorded"
"""What the header shows for a fact a report does not carry (reports written before date and machine)."""
_ROW_KEYS = {"backend", "backend_argument", "algorithm", "property", "status"}


class ReportError(StepspecError, ValueError):
    """A file that cannot be read as a conformance report (param ``path``)."""

    def __init__(self, path, message: str):
        super().__init__("path", f"{path}: {message}")


@dataclass(frozen=True)
class ConformanceReport:
    """One JSON report: where it was read from, its header (every top-level key but the rows) and its rows."""

    path: str
    header: dict
    rows: list[dict]


@dataclass(frozen=True)
class Column:
    """One backend of one report (its ``--backend`` argument, the backend's name, version, dtype, device) and
    its rows."""

    report: int
    argument: str
    name: str
    version: str
    dtype: str
    device: str
    rows: list[dict]

    @property
    def label(self) -> str:
        named = self.name if self.argument == self.name else f"{self.argument}: {self.name}"
        return f"{named} {self.version} ({self.dtype}, {self.device})"

    def anchor(self, algo: str) -> str:
        return re.sub(r"[^a-z0-9]+", "-", f"r{self.report + 1}-{self.argument}-{algo}".lower()).strip("-")


@dataclass(frozen=True)
class Cell:
    rows: list[dict]

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    @property
    def verdict(self) -> str:
        """The cell's worst status: failed, then xfailed, then passed; absent or skipped when nothing ran."""
        for status in (*TESTED, "absent"):
            if self.count(status):
                return status
        return "skipped"

    @property
    def summary(self) -> str:
        """``12 passed, 1 xfailed``; a single word when none of its rows was tested."""
        counts = [f"{self.count(s)} {s}" for s in ("passed", "failed", "xfailed") if self.count(s)]
        return ", ".join(counts) if counts else self.verdict

    @property
    def max_ratio(self) -> float | None:
        """The largest deviation over tolerance among its tested rows (None: no row measured one); a ratio
        recorded as null was not finite."""
        ratios = [r.get("max_deviation_over_tolerance") for r in self.rows if r["status"] in TESTED]
        ratios = [float("inf") if x is None else x for x in ratios]
        return max(ratios) if any(ratios) else None


def load_reports(paths) -> list[ConformanceReport]:
    """The reports at ``paths``, in order; a file that is missing or not a report raises ReportError."""
    reports = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ReportError(path, "no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReportError(path, f"not a conformance report (not readable as JSON: {exc})") from None
        rows = data.get("rows") if isinstance(data, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and _ROW_KEYS <= r.keys() for r in rows):
            raise ReportError(path, "not a conformance report (no list of rows as --stepspec-json writes them)")
        header = {k: v for k, v in data.items() if k not in ("rows", "self_checks", "summary")}
        reports.append(ConformanceReport(str(path), header, rows))
    return reports


def columns(reports) -> list[Column]:
    """Every backend of every report, in the order of the reports and of each report's ``--backend``s."""
    found = []
    for i, report in enumerate(reports):
        by_backend: dict[str, list[dict]] = {name: [] for name in report.header.get("backends") or ()}
        for row in report.rows:
            by_backend.setdefault(row["backend_argument"], []).append(row)
        for argument, rows in by_backend.items():
            if not rows:  # a backend the run named but selected nothing of
                continue
            first = rows[0]
            found.append(
                Column(
                    i,
                    argument,
                    first["backend"],
                    str(first.get("backend_version", "?")),
                    first.get("dtype", "?"),
                    first.get("device", "?"),
                    rows,
                )
            )
    return found


def algorithms(reports) -> list[str]:
    """The spec's algorithms in the reference's order, then any a report names that the spec does not. (The
    reference's registry, not the suite's catalogue: building a matrix needs no hypothesis.)"""
    named = {row["algorithm"] for report in reports for row in report.rows}
    return [a for a in ALGORITHMS if a in named] + sorted(named - set(ALGORITHMS))


def cell(column: Column, algo: str) -> Cell | None:
    rows = [r for r in column.rows if r["algorithm"] == algo]
    return Cell(rows) if rows else None


def _ratio(x) -> str:
    if x is None:
        return "-"
    return "inf" if x == float("inf") else f"{x:.3g}"


def header_facts(report: ConformanceReport) -> list[tuple[str, str]]:
    """(what, value) pairs stating when, where, with what and how the report was made."""
    h = report.header
    machine = h.get("machine") or {}
    if machine:
        where = f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"
        where += f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU"
        where += f"; {machine.get('platform', '?')}"
    else:
        where = NOT_RECORDED
    libraries = dict.fromkeys(f"{r['backend']} {r.get('backend_version', '?')}" for r in report.rows)
    spec = f", spec {h['spec']}" if h.get("spec") else ""
    return [
        ("date", h.get("date", NOT_RECORDED)),
        ("versions", f"stepspec {h.get('stepspec', '?')}{spec}; {', '.join(libraries) or 'no backend'}"),
        ("python", h.get("python", NOT_RECORDED)),
        ("machine", where),
        ("command", h.get("command", NOT_RECORDED)),
        ("profile", f"{h.get('profile', '?')}" + (f", seed {h['seed']}" if h.get("seed") is not None else "")),
    ]


def _cell_text(c: Cell | None) -> tuple[str, str]:
    """(summary, dev/tol) of a cell; an algorithm its column never ran reads "not run"."""
    if c is None:
        return "not run", ""
    ratio = c.max_ratio
    return c.summary, "" if ratio is None else f"max dev/tol {_ratio(ratio)}"


# --------------------------------------------------------------------------- Markdown


def _md(text) -> str:
    return str(text).replace("|", "\\|")


NO_REPORTS = (
    "No conformance report was found. `python -m pytest` writes `build/reports/conformance.json`; "
    "`stepspec conform --backend NAME --json PATH` writes one per backend; `stepspec report PATH... --html OUT` "
    "builds this page from any set of them."
)


def matrix_markdown(reports) -> str:
    cols, algos = columns(reports), algorithms(reports)
    lines = ["# Conformance matrix", ""]
    if not reports:
        return "\n".join(lines + [NO_REPORTS, ""])
    for i, report in enumerate(reports):
        lines += [f"**Report {i + 1}** (`{report.path}`):", ""]
        for what, value in header_facts(report):
            lines.append(f"- {what}: `{_md(value)}`" if what == "command" else f"- {what}: {_md(value)}")
        lines.append("")
    lines += [
        "| algorithm | " + " | ".join(_md(c.label) for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for algo in algos:
        cells = []
        for col in cols:
            c = cell(col, algo)
            summary, ratio = _cell_text(c)
            link = f"[{summary}](#{col.anchor(algo)})" if c is not None else summary
            cells.append(f"{link}<br>{ratio}" if ratio else link)
        lines.append(f"| `{algo}` | " + " | ".join(cells) + " |")
    lines += ["", "## Rows", ""]
    for col in cols:
        for algo in algos:
            c = cell(col, algo)
            if c is None:
                continue
            lines += [f'<a id="{col.anchor(algo)}"></a>', "", f"### `{algo}` on {_md(col.label)}", ""]
            lines += ["| property | status | examples | max deviation | dev/tol |", "|---|---|---|---|---|"]
            for r in c.rows:
                deviation = r.get("max_deviation")
                lines.append(
                    f"| `{r['property']}` | {r['status']} | {r.get('examples', 0)} | "
                    f"{'inf' if deviation is None else f'{deviation:.3g}'} | "
                    f"{_ratio(r.get('max_deviation_over_tolerance')) if r['status'] in TESTED else '-'} |"
                )
            lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.passed { background: #e6f4e6; } td.failed { background: #f9dcdc; } td.xfailed { background: #fdf3d6; }
td.absent, td.skipped, td.not-run { color: #777; }
small { color: #555; } code { font-size: 0.95em; }
"""


def _e(text) -> str:
    return html.escape(str(text))


def matrix_html(reports) -> str:
    cols, algos = columns(reports), algorithms(reports)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>stepspec conformance matrix</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Conformance matrix</h1>",
    ]
    for i, report in enumerate(reports):
        out.append(f"<h2>Report {i + 1} <small><code>{_e(report.path)}</code></small></h2><ul>")
        for what, value in header_facts(report):
            shown = f"<code>{_e(value)}</code>" if what == "command" else _e(value)
            out.append(f"<li>{_e(what)}: {shown}</li>")
        out.append("</ul>")
    out.append("<table><thead><tr><th>algorithm</th>" + "".join(f"<th>{_e(c.label)}</th>" for c in cols))
    out.append("</tr></thead><tbody>")
    for algo in algos:
        out.append(f"<tr><th><code>{_e(algo)}</code></th>")
        for col in cols:
            c = cell(col, algo)
            summary, ratio = _cell_text(c)
            if c is None:
                out.append(f'<td class="not-run">{_e(summary)}</td>')
                continue
            extra = f"<br><small>{_e(ratio)}</small>" if ratio else ""
            out.append(f'<td class="{c.verdict}"><a href="#{col.anchor(algo)}">{_e(summary)}</a>{extra}</td>')
        out.append("</tr>")
    out.append("</tbody></table><h2>Rows</h2>")
    for col in cols:
        for algo in algos:
            c = cell(col, algo)
            if c is None:
                continue
            out.append(f'<h3 id="{col.anchor(algo)}"><code>{_e(algo)}</code> on {_e(col.label)}</h3>')
            out.append(
                "<table><thead><tr><th>property</th><th>status</th><th>examples</th><th>max deviation</th>"
                "<th>dev/tol</th></tr></thead><tbody>"
            )
            for r in c.rows:
                deviation = r.get("max_deviation")
                ratio = _ratio(r.get("max_deviation_over_tolerance")) if r["status"] in TESTED else "-"
                out.append(
                    f'<tr><td><code>{_e(r["property"])}</code></td><td class="{_e(r["status"])}">{_e(r["status"])}'
                    f"</td><td>{_e(r.get('examples', 0))}</td>"
                    f"<td>{'inf' if deviation is None else f'{deviation:.3g}'}</td><td>{ratio}</td></tr>"
                )
            out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
