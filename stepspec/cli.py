"""The ``stepspec`` command.

stepspec conform --backend NAME [--json PATH]   run the conformance suite, print algorithm × property
stepspec spec [ALGORITHM | PAGE]                print a spec section (or page); no argument lists them
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__, spec


def _conform(args) -> int:
    import pytest

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
        "--backend",
        args.backend,
        "--stepspec-report",
        "-q",
        "--tb=short",
    ]
    if args.json:
        argv += ["--stepspec-json", str(Path(args.json).resolve())]
    if args.profile:
        argv += ["--hypothesis-profile", args.profile]
    if args.seed is not None:
        argv += ["--hypothesis-seed", str(args.seed)]
    if args.max_examples is not None:
        argv += ["--max-examples", str(args.max_examples)]
    if args.k:
        argv += ["-k", args.k]
    if args.exitfirst:
        argv.append("-x")
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="stepspec", description="executable specification of adaptive optimizers")
    parser.add_argument("--version", action="version", version=f"stepspec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    conform = commands.add_parser("conform", help="run the conformance suite against a backend")
    conform.add_argument(
        "--backend",
        default="reference",
        help="built-in name, entry point, or package.module:attribute (default: reference)",
    )
    conform.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    conform.add_argument("--profile", choices=["ci", "dev", "thorough"], help="hypothesis profile (default: ci)")
    conform.add_argument("--seed", type=int, help="hypothesis seed (for profiles that are not derandomized)")
    conform.add_argument("--max-examples", type=int, help="examples per property")
    conform.add_argument("-k", metavar="EXPR", help="only tests matching the pytest -k expression")
    conform.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    conform.set_defaults(run=_conform)

    show = commands.add_parser("spec", help="print the spec of an algorithm or a page")
    show.add_argument("name", nargs="?", help="algorithm id (lm_rllc) or page (rllc, formalism)")
    show.set_defaults(run=_spec)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
