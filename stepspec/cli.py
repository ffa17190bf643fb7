"""The ``stepspec`` command (also ``python -m stepspec``).

stepspec conform --backend NAME [--algorithm ID] [--json PATH] ...   run the conformance suite
stepspec spec [ALGORITHM | PAGE]                                      print a spec section (or page)
stepspec report PATH... --html OUT [--markdown OUT]                   the conformance matrix of JSON reports
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from . import SPEC_VERSION, __version__, spec

EXIT_CODES = """exit status: 0 every selected property passed; 1 a property failed; 4 a backend could not be
loaded or is invalid, or the selection names nothing; 5 nothing was tested (the backend provides none of
the selected algorithms); 2 bad command-line arguments."""

PROFILE_HELP = (
    "hypothesis profile: ci (default; 25 derandomized examples per property, reproducible; about 70 s on "
    "one core for the reference), dev (10 random examples), thorough (1000 random examples: about 40 times "
    "ci's time; on demand)"
)


def _conform(args) -> int:
    import pytest

    from .backends.registry import BackendError, expand, resolve

    for name in expand(args.backend):
        try:
            resolve(name)  # load failures end here, in one line, before pytest starts
        except BackendError as exc:
            print(f"stepspec conform: {exc}", file=sys.stderr)
            return int(pytest.ExitCode.USAGE_ERROR)
    conformance = Path(__file__).with_name("conformance")
    argv = [
        "--pyargs",
        "stepspec.conformance",
        "-c",
        str(conformance / "conform.ini"),
        "--rootdir",
        str(conformance),
        "-p",
        "stepspec.conformance.plugin",
        "--stepspec-report",
        "-q",
        "--tb=short",
    ]
    for name in args.backend:
        argv += ["--backend", name]
    for algo in args.algorithm or ():
        argv += ["--algorithm", algo]
    for test in args.test or ():
        argv += ["--stepspec-test", test]
    if args.replay:
        argv += ["--stepspec-replay", args.replay]
    if args.json:
        argv += ["--stepspec-json", str(Path(args.json).resolve())]
    if args.profile:
        argv += ["--stepspec-profile", args.profile]
    if args.profile in ("dev", "thorough") and args.seed is None:
        args.seed = random.randrange(2**32)  # chosen here so that the report can name it
    if args.seed is not None:
        argv += ["--hypothesis-seed", str(args.seed)]
    if args.max_examples is not None:
        argv += ["--max-examples", str(args.max_examples)]
    if args.k:
        argv += ["-k", args.k]
    if args.exitfirst:
        argv.append("-x")
    if args.jobs:
        argv += ["-n", str(args.jobs)]
    return int(pytest.main(argv))


def _spec(args) -> int:
    sections = spec.sections()
    if not args.name:
        print(f"stepspec {__version__}: spec pages in {spec.spec_dir()}")
        for page in sorted(spec.spec_dir().glob("*.md")):
            algos = [s.algo for s in sections.values() if s.page == page.name]
            print(f"  {page.stem:<14} {', '.join(algos)}")
        return 0
    if args.name in sections:
        print(sections[args.name].text, end="")
        return 0
    try:
        print(spec.page(args.name), end="")
    except KeyError:
        print(f"stepspec spec: no algorithm or page {args.name!r}; run `stepspec spec` for the list", file=sys.stderr)
        return 2
    return 0


def _report(args) -> int:
    from .conformance.matrix import ReportError, load_reports, matrix_html, matrix_markdown

    try:
        reports = load_reports(args.paths)
    except ReportError as exc:
        print(f"stepspec report: {exc}", file=sys.stderr)
        return 2
    outputs = [(args.html, matrix_html)] + ([(args.markdown, matrix_markdown)] if args.markdown else [])
    for out, render in outputs:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(render(reports), encoding="utf-8")
        print(f"stepspec report: wrote {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="stepspec", description="executable specification of adaptive optimizers")
    parser.add_argument("--version", action="version", version=f"stepspec {__version__}, spec {SPEC_VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)

    conform = commands.add_parser(
        "conform",
        help="run the conformance suite against a backend",
        description="Run every conformance property against a backend and print a backend × algorithm × "
        "property table (spec/conformance.md). A failure prints the command that replays exactly its example.",
        epilog=EXIT_CODES,
    )
    conform.add_argument(
        "--backend",
        action="append",
        help="a built-in name (reference, reference-float32, torch, torch.optim: its three implementations, …), "
        "an entry point, or module:attribute for an object in a module importable from the current directory "
        "(repeatable; default: reference)",
    )
    conform.add_argument(
        "--algorithm", action="append", metavar="ID", help="only this algorithm's rows, e.g. lm_rllc (repeatable)"
    )
    conform.add_argument(
        "--test", action="append", metavar="FILE.py::TEST[PARAMS]", help="only this test, as a re-run command names it"
    )
    conform.add_argument("--replay", metavar="VERSION:BLOB", help="replay this failing example (with one --test)")
    conform.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    conform.add_argument("--profile", choices=["ci", "dev", "thorough"], help=PROFILE_HELP)
    conform.add_argument("--seed", type=int, help="hypothesis seed (for profiles that are not derandomized)")
    conform.add_argument("--max-examples", type=int, help="examples per property (overrides the profile)")
    conform.add_argument("-k", metavar="EXPR", help="only tests matching the pytest -k expression")
    conform.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    conform.add_argument("-j", "--jobs", type=int, metavar="N", help="run on N processes (pytest-xdist)")
    conform.set_defaults(run=_conform)

    show = commands.add_parser("spec", help="print the spec of an algorithm or a page")
    show.add_argument("name", nargs="?", help="algorithm id (lm_rllc) or page (rllc, formalism)")
    show.set_defaults(run=_spec)

    report = commands.add_parser(
        "report",
        help="the conformance matrix (algorithm × backend) of JSON reports",
        description="Build the conformance matrix from the JSON reports the suite writes (--stepspec-json, "
        "stepspec conform --json): one column per backend of each report, each cell linking to its rows.",
        epilog="exit status: 0 written; 2 a file is missing or not a conformance report, or bad arguments.",
    )
    report.add_argument("paths", nargs="+", metavar="PATH", help="a JSON conformance report (repeatable)")
    report.add_argument("--html", required=True, metavar="OUT", help="write the matrix as a standalone HTML page")
    report.add_argument("--markdown", metavar="OUT", help="also write it as Markdown")
    report.set_defaults(run=_report)

    args = parser.parse_args(argv)
    if args.command == "conform":
        args.backend = args.backend or ["reference"]
        if args.replay and len(args.test or ()) != 1:
            parser.error("--replay needs exactly one --test")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
