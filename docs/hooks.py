"""mkdocs hooks that turn spec/ into the site (mkdocs.yml).

Generated at build time, never committed: the home page (README.md, its links rewritten for the site), one API
page per reference family (mkdocstrings), the conformance matrix (from build/reports/*.json) and the figures of
benchmarks/results/ and examples/results/. On every page: the equation tags of the spec tables, such as (R1),
become anchors (#R1), and each formula pymdownx.arithmatex marked becomes MathML, so that the site needs no
JavaScript renderer; a formula latex2mathml cannot convert fails the build, naming page and formula.
"""

from __future__ import annotations

import html
import logging
import os
import posixpath
import re
from pathlib import Path

from latex2mathml.converter import convert as latex2mathml
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

import stepspec
from stepspec.conformance.matrix import load_reports, matrix_markdown

ROOT = Path(__file__).resolve().parent.parent
SPEC_DIR = "spec"
FIGURE_DIRS = ("benchmarks/results", "examples/results")
REPORTS = "build/reports/*.json"
API_FAMILIES = {
    "classical": "Classical optimizers",
    "rllc": "RLLC, LM-RLLC and linear memory",
    "propagators": "Propagators",
    "metaoptimize": "MetaOptimize",
    "idbd": "IDBD",
    "hypergradient": "Hypergradient descent",
    "trainable_optimizer": "Trainable Optimizer",
    "elra": "ELRA",
}


def figures() -> list[str]:
    """The figures the site carries, by repository path; each keeps that path in the site."""
    return sorted(str(p.relative_to(ROOT).as_posix()) for d in FIGURE_DIRS for p in (ROOT / d).glob("*.png"))


# --------------------------------------------------------------------------- links


_LINK_OR_CODE = re.compile(r"`[^`]+`|(?P<image>!?)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _prose_runs(markdown: str):
    """Split Markdown into (is_prose, text) runs: fenced and indented code blocks are not prose."""
    run, prose, fence, previous_blank = [], True, None, True
    for line in markdown.splitlines(keepends=True):
        opening = _FENCE.match(line)
        if fence is not None:
            code = True
            if opening and opening.group(1) == fence:
                fence = None
        elif opening:
            code, fence = True, opening.group(1)
        else:
            code = line.startswith("    ") and (previous_blank or not prose)
        if code == prose and run:
            yield prose, "".join(run)
            run = []
        prose = not code
        run.append(line)
        previous_blank = not line.strip()
    if run:
        yield prose, "".join(run)


def rewrite_links(markdown: str, source_dir: str, page_dir: str, figure_paths) -> str:
    """Rewrite the links of a page written at repository folder ``source_dir`` for the site, where the page lies
    in folder ``page_dir`` of the docs: a spec page keeps its link, a figure is linked where the site copies it,
    any other repository file becomes its path as code (the project has no public URL to link to), and a figure
    named as code becomes a link to it."""

    def site_target(repo_path: str, anchor: str) -> str:
        return posixpath.relpath(repo_path, page_dir or ".") + anchor

    def replace(match: re.Match) -> str:
        text = match.group(0)
        if text.startswith("`"):
            path = text.strip("`")
            return f"[{text}]({site_target(path, '')})" if path in figure_paths else text
        target = match.group("target")
        if re.match(r"[a-z][a-z0-9+.-]*:|#", target):
            return text
        path, _, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(source_dir, path))
        in_site = f"{match.group('image')}[{match.group('text')}]"
        if repo_path.startswith(SPEC_DIR + "/"):
            return f"{in_site}({site_target(repo_path[len(SPEC_DIR) + 1 :], '#' + anchor if anchor else '')})"
        if repo_path in figure_paths:
            return f"{in_site}({site_target(repo_path, '')})"
        label = match.group("text")
        return f"`{repo_path}`" if label.strip("`") == repo_path else f"{label} (`{repo_path}`)"

    return "".join(_LINK_OR_CODE.sub(replace, text) if prose else text for prose, text in _prose_runs(markdown))


# --------------------------------------------------------------------------- anchors

_ALGORITHM_HEADING = re.compile(r"^(## `(\w+)`[^\n{]*?)[ \t]*$", re.MULTILINE)
_INLINE_ANCHOR = re.compile(r"[ \t]*\{#([\w-]+)\}")

_TABLE_ROW = re.compile(r"^(\|)([^|\n]*)", re.MULTILINE)
_TAG = re.compile(r"\(([A-Z]+[0-9]+[a-z]?)\)")


def anchor_sections(markdown: str) -> str:
    """The anchors the spec's links use: an algorithm's section (a heading ``## `lm_rllc` — …``) is ``#lm_rllc``,
    as in stepspec.spec; a ``{#id}`` inside a paragraph (``**Period {#period}.**``) marks the anchor ``id``."""

    def sections(text: str) -> str:
        text = _ALGORITHM_HEADING.sub(lambda m: f"{m.group(1)} {{#{m.group(2)}}}", text)
        return "".join(
            line if line.startswith("#") else _INLINE_ANCHOR.sub(r'<span id="\1"></span>', line)
            for line in text.splitlines(keepends=True)
        )

    return "".join(sections(text) if prose else text for prose, text in _prose_runs(markdown))


def anchor_equation_tags(markdown: str) -> str:
    """Give each equation tag of a table row whose first cell starts with one, such as ``(R1)`` or
    ``(C7)–(C9)``, the anchor ``R1``; a tag repeated on the page (a later table citing the equation) links to its
    first row."""
    seen: set[str] = set()

    def anchor(match: re.Match) -> str:
        spans = ""
        cell = match.group(2).strip()
        for tag in _TAG.findall(cell) if _TAG.match(cell) else ():
            if tag not in seen:
                seen.add(tag)
                spans += f'<span id="{tag}"></span>'
        return match.group(1) + (f" {spans}{match.group(2).lstrip()}" if spans else match.group(2))

    return "".join(_TABLE_ROW.sub(anchor, text) if prose else text for prose, text in _prose_runs(markdown))


# --------------------------------------------------------------------------- math

_MARKED_MATH = re.compile(
    r'<span class="arithmatex">\\\((?P<inline>.*?)\\\)</span>|<div class="arithmatex">\\\[(?P<block>.*?)\\\]</div>',
    re.DOTALL,
)
# latex2mathml passes an unknown command through as text (<mi>\foo</mi>), an unbalanced brace as <mi>}</mi>, and
# the column separator of an environment it does not know (aligned, for one) as <mi>&</mi>
_UNCONVERTED = re.compile(r"<m[ino][^>]*>(\\[A-Za-z]+|[{}&]|&amp;)</m[ino]>")


class FormulaError(ValueError):
    """A formula latex2mathml cannot convert faithfully."""


def latex_to_mathml(latex: str, display: str) -> str:
    """The MathML of one formula (``display`` "inline" or "block"); FormulaError when it cannot be converted."""
    try:
        mathml = latex2mathml(latex, display=display)
    except Exception as error:  # latex2mathml signals malformed input with many exception classes
        raise FormulaError(f"{type(error).__name__} {error}".strip()) from error
    if unconverted := _UNCONVERTED.search(mathml):
        raise FormulaError(f"not understood: {unconverted.group(1)}")
    return mathml


def typeset_math(page_html: str, page: str) -> str:
    """Replace every formula arithmatex marked in ``page_html`` by MathML; PluginError naming ``page`` and every
    formula that cannot be converted."""
    failures = []

    def convert(match: re.Match) -> str:
        block = match.group("block") is not None
        latex = html.unescape(match.group("block") if block else match.group("inline")).strip()
        try:
            return latex_to_mathml(latex, "block" if block else "inline")
        except FormulaError as error:
            failures.append(f"  {'$$' if block else '$'}{latex}{'$$' if block else '$'}: {error}")
            return match.group(0)

    typeset = _MARKED_MATH.sub(convert, page_html)
    if failures:
        raise PluginError(f"{page}: formulas latex2mathml cannot convert to MathML:\n" + "\n".join(failures))
    return typeset


# --------------------------------------------------------------------------- generated pages


def home_page(figure_paths) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return rewrite_links(readme, "", "", figure_paths)


def api_page(family: str) -> str:
    return f"# API: {API_FAMILIES[family]}\n\n::: stepspec.reference.{family}\n"


def matrix_page() -> str:
    # relative paths: the page names each report by where the default test command writes it
    return matrix_markdown(load_reports(sorted(os.path.relpath(p) for p in ROOT.glob(REPORTS))))


# --------------------------------------------------------------------------- mkdocs events


class _SkipStaticAllWarning(logging.Filter):
    """griffe reads every module of stepspec statically, and cannot expand stepspec.optax's ``__all__``, which is
    computed (``*ALGORITHMS``); the site documents stepspec.reference only, so that limitation is not the site's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Unsupported item in stepspec.optax.__all__" not in record.getMessage()


_SKIP_STATIC_ALL_WARNING = _SkipStaticAllWarning()  # one instance: addFilter ignores it when `mkdocs serve` rebuilds


def on_config(config):
    logging.getLogger("mkdocs.plugins.griffe").addFilter(_SKIP_STATIC_ALL_WARNING)
    config.extra["spec_version"] = stepspec.SPEC_VERSION
    return config


def on_files(files, config):
    figure_paths = figures()
    files.append(File.generated(config, "index.md", content=home_page(set(figure_paths))))
    for family in API_FAMILIES:
        files.append(File.generated(config, f"api/{family}.md", content=api_page(family)))
    files.append(File.generated(config, "conformance-matrix.md", content=matrix_page()))
    for path in figure_paths:
        files.append(File.generated(config, path, abs_src_path=str(ROOT / path)))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.generated_by is not None:
        return markdown
    page_dir = posixpath.dirname(page.file.src_uri)
    source_dir = posixpath.join(SPEC_DIR, page_dir)
    return anchor_equation_tags(anchor_sections(rewrite_links(markdown, source_dir, page_dir, set(figures()))))


def on_page_content(html_content, page, config, files):
    return typeset_math(html_content, _source_name(page.file))


def _source_name(file: File) -> str:
    """The file a page's text comes from, for messages: README.md for the home page, spec/… for a spec page."""
    if file.src_uri == "index.md":
        return "README.md"
    return file.src_uri if file.generated_by is not None else posixpath.join(SPEC_DIR, file.src_uri)
