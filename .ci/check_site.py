"""Open every spec page of the built site in headless Chromium and check that its math is typeset.

Usage: python .ci/check_site.py [SITE] [--screenshots DIR]

SITE (default ``site/``) is served on a free localhost port; each spec page is loaded by Debian's
Chromium (/usr/bin/chromium) and its rendered DOM must show no raw TeX (``\\(``, ``\\[``, ``$$``,
``\\frac``, ``\\begin{``), no MathML error (class ``latex2mathml-error``, ``<merror>``, the text
"MathML error"), no TeX left inside a ``<math>`` element (a ``\\`` or an ``&``: latex2mathml passes an
environment it does not know, such as ``aligned``, through as ``<mi>&</mi>``), and at least one ``<math>``
element where the page's source in ``spec/`` has LaTeX. One line per page; exit status 1 on any failure,
including a missing Chromium.

Screenshots load the page in a full-window iframe scrolled to its first display formula: headless
Chromium captures a blank image when the page itself is opened at a fragment.
"""

from __future__ import annotations

import argparse
import functools
import html
import http.server
import re
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
PAGES = (
    "formalism",
    "tolerances",
    "conformance",
    "errors",
    "classical",
    "rllc",
    "propagators",
    "metaoptimize",
    "idbd",
    "hypergradient",
    "trainable_optimizer",
    "elra",
    "convergence",
    "backends",
    "references",
)
SCREENSHOT_PAGES = ("metaoptimize", "rllc")
RAW_TEX = ("\\(", "\\[", "$$", "\\frac", "\\begin{")
TEX_IN_MATH = ("\\", "&")
SCREENSHOT_FRAME = "/__check_site_frame__"
ERROR_TEXT = "MathML error"
ERROR_CLASS = "latex2mathml-error"
# Root may not use Chromium's sandbox; the rest keeps a headless run offline and free of first-run work.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
CHROMIUM_TIMEOUT_S = 120
REPOSITORY = Path(__file__).resolve().parent.parent

_CODE = re.compile(r"^```.*?^```|^(?: {4}|\t).*?$|`[^`\n]+`", re.MULTILINE | re.DOTALL)
_FORMULA = re.compile(r"\$\$.+?\$\$|\$\S(?:[^$\n]*\S)?\$", re.DOTALL)


def source_has_latex(markdown: str) -> bool:
    """Whether the Markdown source has a ``$…$`` or ``$$…$$`` formula outside code."""
    return bool(_FORMULA.search(_CODE.sub("", markdown)))


class RenderedPage(HTMLParser):
    """The visible text, the ``<math>`` elements and the error markers of a rendered DOM."""

    _HIDDEN = {"script", "style", "template", "head", "annotation", "annotation-xml", "noscript"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.math_text: list[str] = []
        self.math_elements = 0
        self.errors: list[str] = []
        self._hidden_depth = 0
        self._math_depth = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag in self._HIDDEN:
            self._hidden_depth += 1
        if tag == "math":
            self._math_depth += 1
            self.math_elements += 1
        if tag == "merror":
            self.errors.append("<merror> element")
        if ERROR_CLASS in (attributes.get("class") or "").split():
            self.errors.append(f"element <{tag}> with class {ERROR_CLASS}")

    def handle_endtag(self, tag):
        if tag in self._HIDDEN and self._hidden_depth:
            self._hidden_depth -= 1
        if tag == "math" and self._math_depth:
            self._math_depth -= 1

    def handle_data(self, data):
        if not self._hidden_depth:
            self.text.append(data)
            if self._math_depth:
                self.math_text.append(data)

    def visible_text(self) -> str:
        return "".join(self.text)


def problems(dom: str, needs_math: bool) -> tuple[list[str], RenderedPage]:
    page = RenderedPage()
    page.feed(dom)
    page.close()
    found = list(page.errors)
    text = page.visible_text()
    for raw in RAW_TEX:
        at = text.find(raw)
        if at >= 0:
            context = " ".join(text[max(0, at - 40) : at + 60].split())
            found.append(f"raw {raw!r} in the visible text: …{context}…")
    math_text = "".join(page.math_text)
    for raw in TEX_IN_MATH:
        if raw in math_text:
            found.append(f"unconverted TeX {raw!r} inside <math>")
    if ERROR_TEXT in text:
        found.append(f"text {ERROR_TEXT!r}")
    if needs_math and page.math_elements == 0:
        found.append("the source has LaTeX but the page has no <math> element")
    if "<body" not in dom or not text.strip():
        found.append("empty page")
    return found, page


def chromium(url: str, *flags: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="check-site-chromium-") as profile:
        command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)


class SiteHandler(http.server.SimpleHTTPRequestHandler):
    """The site's files, and at SCREENSHOT_FRAME?src=URL a page showing URL in a full-window iframe,
    scrolled to its first display formula (below the theme's fixed header)."""

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path != SCREENSHOT_FRAME:
            return super().do_GET()
        src = html.escape(urllib.parse.parse_qs(query)["src"][0])
        body = (
            '<!doctype html><html><body style="margin:0">'
            f'<iframe id="page" src="{src}" style="border:0;width:100vw;height:100vh"></iframe>'
            "<script>page.onload = () => {"
            " const doc = page.contentDocument;"
            " const math = doc.querySelector('math[display=block]') || doc.querySelector('math');"
            " if (math) { math.scrollIntoView(); page.contentWindow.scrollBy(0, -160); }"
            "};</script></body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


class SiteServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """Chromium drops connections it no longer needs once its virtual time is up; that is no error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def serve(site: Path) -> http.server.ThreadingHTTPServer:
    server = SiteServer(("127.0.0.1", 0), functools.partial(SiteHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def check_page(base: str, name: str, spec: Path, screenshots: Path | None) -> bool:
    url = f"{base}/{name}/index.html"
    status = http_status(url)
    if status != 200:
        print(f"FAIL {name}: HTTP {status} for {url}")
        return False
    source = spec / f"{name}.md"
    needs_math = source.is_file() and source_has_latex(source.read_text(encoding="utf-8"))
    run = chromium(url, "--dump-dom", "--virtual-time-budget=3000")
    if run.returncode != 0 or not run.stdout.strip():
        print(f"FAIL {name}: chromium exited {run.returncode}: {run.stderr.strip()[-300:]}")
        return False
    found, page = problems(run.stdout, needs_math)
    if screenshots is not None and name in SCREENSHOT_PAGES:
        target = f"/{name}/index.html"
        png = screenshots / f"{name}.png"
        frame = f"{base}{SCREENSHOT_FRAME}?" + urllib.parse.urlencode({"src": target})
        shot = chromium(frame, f"--screenshot={png}", "--window-size=1280,2000", "--virtual-time-budget=3000")
        if shot.returncode != 0 or not png.is_file():
            found.append(f"screenshot failed ({shot.returncode}): {shot.stderr.strip()[-300:]}")
        else:
            print(f"     {name}: screenshot {png} of {target}")
    latex = "LaTeX in source" if needs_math else "no LaTeX in source"
    if found:
        print(f"FAIL {name}: {page.math_elements} <math> ({latex}); " + "; ".join(found))
        return False
    print(f"ok   {name}: {page.math_elements} <math> ({latex})")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", nargs="?", default="site", type=Path, help="the built site folder (default: site)")
    parser.add_argument("--screenshots", type=Path, help="write PNGs of the metaoptimize and rllc pages here")
    parser.add_argument("--spec", type=Path, default=REPOSITORY / "spec", help="the pages' Markdown sources")
    args = parser.parse_args(argv)
    if not CHROMIUM.is_file():
        print(f"FAIL: {CHROMIUM} is missing; install Debian's package: apt-get install -y chromium", file=sys.stderr)
        return 1
    if not args.site.is_dir():
        print(f"FAIL: no site folder {args.site} (build it with mkdocs build --strict)", file=sys.stderr)
        return 1
    if args.screenshots is not None:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    server = serve(args.site.resolve())
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        results = [check_page(base, name, args.spec, args.screenshots) for name in PAGES]
    finally:
        server.shutdown()
    failed = results.count(False)
    print(f"{len(PAGES) - failed} of {len(PAGES)} pages pass" + (f", {failed} FAIL" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
