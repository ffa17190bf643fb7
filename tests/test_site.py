"""The documentation site (mkdocs.yml, docs/hooks.py): it builds in strict mode without a warning, every spec
page is in it, equation tags are anchors, and formulas are MathML or the build fails naming page and formula."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE_PACKAGES = ("mkdocs", "material", "mkdocstrings_handlers.python", "pymdownx", "latex2mathml")

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name.split(".")[0]) is None for name in SITE_PACKAGES),
    reason='the site needs the docs extra: pip install -e ".[docs]"',
)


def load_hooks():
    spec = importlib.util.spec_from_file_location("stepspec_site_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    # NO_MKDOCS_2_WARNING silences mkdocs-material's end-of-life banner, which is printed, not a build warning
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    return out, build.returncode, build.stdout + build.stderr


def test_the_site_builds_in_strict_mode_without_a_warning(site):
    _, returncode, log = site
    assert returncode == 0, log
    assert "WARNING" not in log, log


def test_every_spec_page_is_in_the_site(site):
    out, _, _ = site
    missing = [p.name for p in sorted((ROOT / "spec").glob("*.md")) if not (out / p.stem / "index.html").is_file()]
    assert not missing, missing


def test_equation_tags_are_anchors(site):
    out, _, _ = site
    assert '<span id="R1"></span>' in (out / "rllc" / "index.html").read_text(encoding="utf-8")


def test_every_formula_of_the_spec_is_mathml(site):
    out, _, _ = site
    for page in sorted((ROOT / "spec").glob("*.md")):
        built = (out / page.stem / "index.html").read_text(encoding="utf-8")
        assert 'class="arithmatex"' not in built, f"{page.name}: a formula left unconverted"
        if "$$" in page.read_text(encoding="utf-8"):
            assert "<math" in built, page.name


def test_a_formula_becomes_mathml_through_the_configured_markdown():
    from markdown import Markdown
    from mkdocs.config import load_config

    config = load_config(str(ROOT / "mkdocs.yml"))
    md = Markdown(extensions=config.markdown_extensions, extension_configs=config.mdx_configs)
    rendered = md.convert("Inline $\\frac{a}{b} < 1$.\n\n$$\n\\sum_{i=1}^{n} \\theta_i^2\n$$\n")
    typeset = load_hooks().typeset_math(rendered, "scratch.md")
    assert typeset.count("<math") == 2 and 'display="block"' in typeset
    assert "arithmatex" not in typeset and "\\frac" not in typeset


@pytest.mark.parametrize(
    "formula", ["\\frac{1}{", "\\left( x", "\\notacommand x", "a}", "\\begin{aligned} a &= b \\end{aligned}"]
)
def test_a_formula_that_cannot_be_converted_fails_the_build_naming_page_and_formula(formula):
    from mkdocs.exceptions import PluginError

    marked = '<span class="arithmatex">\\({}\\)</span>'
    page_html = f"<p>ok {marked.format('x^2')}, bad {marked.format(formula)}</p>"
    with pytest.raises(PluginError) as failure:
        load_hooks().typeset_math(page_html, "spec/scratch.md")
    assert "spec/scratch.md" in str(failure.value) and f"${formula}$" in str(failure.value)
    assert "x^2" not in str(failure.value)
