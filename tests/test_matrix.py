"""The conformance matrix built from the suite's JSON reports, `stepspec report` and `stepspec --version`
(issue 14)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from stepspec import SPEC_VERSION, __version__
from stepspec.cli import main
from stepspec.conformance.matrix import NOT_RECORDED, ReportError, load_reports, matrix_html, matrix_markdown

ROOT = Path(__file__).resolve().parent.parent


def _row(backend, algo, prop, status, ratio=0.5, deviation=1e-12, examples=25, argument=None):
    return {
        "backend": backend,
        "backend_version": "1.0",
        "backend_argument": argument or backend,
        "dtype": "float64",
        "device": "cpu",
        "algorithm": algo,
        "property": prop,
        "status": status,
        "examples": examples if status != "absent" else 0,
        "max_deviation": deviation,
        "max_deviation_over_tolerance": ratio,
    }


NEW = {
    "stepspec": "0.1.0",
    "spec": "2026.12",
    "profile": "ci",
    "backends": ["reference", "buggy"],
    "date": "2026-12-01T02:00:00+00:00",
    "python": "3.11.7",
    "machine": {"platform": "Linux-x", "cpu": "Some CPU", "cores": 16, "gpu": "NVIDIA H200"},
    "command": "python -m pytest --backend reference --backend buggy",
    "rows": [
        _row("reference", "adam", "equivalence", "passed", ratio=0.25),
        _row("reference", "adam", "errors", "passed", ratio=0.0),
        _row("reference", "sgd", "equivalence", "passed", ratio=0.125),
        _row("buggy", "adam", "equivalence", "failed", ratio=3.5, deviation=0.01),
        _row("buggy", "adam", "errors", "xfailed", ratio=0.0),
        _row("buggy", "adam", "state", "passed", ratio=0.75),  # the cell still reads as failed
        _row("buggy", "sgd", "equivalence", "passed", ratio=None),  # a non-finite ratio is written as null
    ],
}
OLD = {  # written before date, machine and command were recorded: still loads
    "stepspec": "0.1.0",
    "profile": "ci",
    "backends": ["torch.optim-foreach"],
    "rows": [
        _row("torch.optim", "adam", "equivalence", "passed", argument="torch.optim-foreach"),
        _row("torch.optim", "lm_rllc", "equivalence", "absent", argument="torch.optim-foreach"),
    ],
}


@pytest.fixture
def synthetic(tmp_path):
    paths = []
    for name, data in [("new.json", NEW), ("old.json", OLD)]:
        (tmp_path / name).write_text(json.dumps(data))
        paths.append(tmp_path / name)
    return load_reports(paths)


class _Page(HTMLParser):
    """The ids, the links and the table cells (text, class) of an HTML page."""

    def __init__(self, text):
        super().__init__()
        self.ids, self.links, self.cells, self._cell = set(), [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "td":
            self._cell = [attrs.get("class"), ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(tuple(self._cell))
            self._cell = None


def _first_table_rows(markdown):
    """{algorithm: [cell, …]} of the matrix (the first table of the Markdown)."""
    table = re.search(r"^\| algorithm \|.*?(?=\n\n)", markdown, re.M | re.S)[0].splitlines()
    head = [c.strip() for c in table[0].strip("|").split(" | ")]
    rows = {}
    for line in table[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows[cells[0].strip("`")] = cells[1:]
    return head[1:], rows


def test_cells_count_verdicts_and_give_the_largest_deviation_over_tolerance(synthetic):
    columns, rows = _first_table_rows(matrix_markdown(synthetic))
    assert columns == [
        "reference 1.0 (float64, cpu)",
        "buggy 1.0 (float64, cpu)",
        "torch.optim-foreach: torch.optim 1.0 (float64, cpu)",
    ]
    assert rows["adam"] == [
        "[2 passed](#r1-reference-adam)<br>max dev/tol 0.25",
        "[1 passed, 1 failed, 1 xfailed](#r1-buggy-adam)<br>max dev/tol 3.5",
        "[1 passed](#r2-torch-optim-foreach-adam)<br>max dev/tol 0.5",
    ]
    assert rows["sgd"] == [
        "[1 passed](#r1-reference-sgd)<br>max dev/tol 0.125",
        "[1 passed](#r1-buggy-sgd)<br>max dev/tol inf",
        "not run",
    ]
    assert rows["lm_rllc"] == ["not run", "not run", "[absent](#r2-torch-optim-foreach-lm-rllc)"]
    assert list(rows) == ["sgd", "adam", "lm_rllc"]  # the catalog's order


def test_every_cell_links_to_its_rows(synthetic):
    markdown = matrix_markdown(synthetic)
    links = re.findall(r"\]\(#([^)]+)\)", markdown)
    anchors = re.findall(r'<a id="([^"]+)"></a>', markdown)
    assert len(links) == 6 and sorted(links) == sorted(anchors)
    detail = markdown.split('<a id="r1-buggy-adam"></a>')[1].split("<a id=")[0]
    assert "| `equivalence` | failed | 25 | 0.01 | 3.5 |" in detail
    assert "| `errors` | xfailed | 25 | 1e-12 | 0 |" in detail
    page = _Page(matrix_html(synthetic))
    assert page.links and all(link.startswith("#") and link[1:] in page.ids for link in page.links)
    assert len(page.links) == 6
    assert ("failed", "1 passed, 1 failed, 1 xfailedmax dev/tol 3.5") in page.cells
    assert ("not-run", "not run") in page.cells and ("absent", "absent") in page.cells


def test_the_header_states_date_versions_machine_and_command(synthetic):
    markdown, page = matrix_markdown(synthetic), matrix_html(synthetic)
    new, old = markdown.split("**Report 2**")
    for text in (new, page):
        assert "2026-12-01T02:00:00+00:00" in text and "stepspec 0.1.0, spec 2026.12; reference 1.0, buggy 1.0" in text
        assert "Some CPU, 16 cores, GPU NVIDIA H200; Linux-x" in text
        assert "python -m pytest --backend reference --backend buggy" in text
    assert old.count(NOT_RECORDED) == 4  # date, python, machine, command
    assert "- versions: stepspec 0.1.0; torch.optim 1.0" in old


def test_the_html_page_is_standalone(synthetic):
    page = matrix_html(synthetic)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<script" not in page


def test_a_real_report_of_two_backends(tmp_path):
    report = tmp_path / "reports" / "real.json"  # the suite creates the folder
    before = datetime.now(timezone.utc)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "stepspec/conformance/test_api.py", "--backend", "reference"]
        + ["--backend", "numpy-array-api", "--stepspec-json", str(report), "-q", "-n", "0", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    (loaded,) = load_reports([report])
    date = datetime.fromisoformat(loaded.header["date"])
    assert date.utcoffset() == timedelta(0) and before - timedelta(seconds=1) <= date <= datetime.now(timezone.utc)
    assert loaded.header["machine"]["cores"] == os.cpu_count() and loaded.header["python"].startswith("3.")
    assert loaded.header["command"].startswith("python -m pytest stepspec/conformance/test_api.py --backend reference")
    columns, rows = _first_table_rows(matrix_markdown([loaded]))
    assert [c.split()[0] for c in columns] == ["reference", "numpy-array-api"]
    properties = {r["property"] for r in loaded.rows}
    assert len(rows) == 19 and all(
        cell.startswith(f"[{len(properties)} passed](#r1-") for cells in rows.values() for cell in cells
    )
    page = _Page(matrix_html([loaded]))
    assert len(page.links) == 38 and all(link[1:] in page.ids for link in page.links)


def test_the_report_command_writes_both_pages(tmp_path, capsys):
    (tmp_path / "new.json").write_text(json.dumps(NEW))
    out = tmp_path / "site" / "matrix.html"
    assert main(["report", str(tmp_path / "new.json"), "--html", str(out), "--markdown", str(tmp_path / "m.md")]) == 0
    assert "r1-buggy-adam" in out.read_text() and "r1-buggy-adam" in (tmp_path / "m.md").read_text()


@pytest.mark.parametrize(
    "content, says",
    [
        (None, "no such file"),
        ("not json", "not readable as JSON"),
        ('[{"rows": []}]', "no list of rows"),
        ('{"rows": [{"backend": "x"}]}', "no list of rows"),
    ],
    ids=["missing", "not-json", "a-list", "rows-without-fields"],
)
def test_the_report_command_rejects_what_is_not_a_report(tmp_path, capsys, content, says):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    assert main(["report", str(path), "--html", str(tmp_path / "m.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"stepspec report: path: {path}: ") and says in err
    assert not (tmp_path / "m.html").exists()
    with pytest.raises(ReportError) as raised:
        load_reports([path])
    assert raised.value.param == "path"


def test_version_names_the_package_and_the_spec(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"stepspec {__version__}, spec {SPEC_VERSION}\n"
    assert __version__ == "0.1.0" and re.fullmatch(r"\d{4}\.\d{2}", SPEC_VERSION)
