"""The README's example runs and prints what its comments say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs_and_its_claim_holds():
    code = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)[1]
    assert len(code.strip().splitlines()) <= 12
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {})
    gap = float(out.getvalue().split()[0])
    assert 1e-9 < gap < 2e-9, gap  # "f(θ_600) − f* ≈ 1.3e-9"


def test_readme_commands_are_the_ci_commands():
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    assert "python -m pytest" in ci and "    python -m pytest\n" in readme
    assert 'pip install -e ".[test]" && stepspec conform --backend reference' in readme
