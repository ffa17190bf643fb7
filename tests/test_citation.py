"""CITATION.cff: valid Citation File Format, the package's and the spec's versions, the four papers
(spec/references.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stepspec import SPEC_VERSION, __version__

ROOT = Path(__file__).resolve().parent.parent
CITATION = ROOT / "CITATION.cff"
PAPERS = ("2402.15262", "2402.02342", "2508.01764", "2309.06274")  # papers 000, 003, 002, 004's predecessor


def test_citation_validates_with_cffconvert():
    cffconvert = shutil.which("cffconvert")
    if cffconvert is None:
        pytest.skip("cffconvert is not installed (pip install cffconvert, or the docs extra)")
    done = subprocess.run([cffconvert, "--validate", "-i", str(CITATION)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_citation_names_the_versions_and_the_four_papers():
    text = CITATION.read_text(encoding="utf-8")
    assert re.search(r"^version: (\S+)$", text, re.M)[1] == __version__
    assert f"spec version {SPEC_VERSION}" in re.search(r"^message: >-\n((?:  .*\n)+)", text, re.M)[1].replace(
        "\n  ", " "
    )
    references = text.partition("\nreferences:\n")[2]
    assert re.findall(r'value: "arXiv:(\S+)"', references) == list(PAPERS)
    for arxiv_id in PAPERS:  # each in spec/references.md, where the spec pages cite it from
        assert f"arXiv:{arxiv_id}" in (ROOT / "spec" / "references.md").read_text(encoding="utf-8")
