"""The spec pages as data.

Each algorithm has a section ``## `algo` — title`` on its family's page in ``spec/``. The section's
hyperparameter table (first column ``hyperparameter``) declares each domain and default once; the
reference constructors validate against it, the conformance suite derives its error inputs and
hypothesis strategies from it, and ``stepspec spec <algo>`` prints the section. The state table
(first column ``state field``) names the fields of S_t every backend must expose.

Domain grammar (the ``domain`` column): an interval ``(0, ∞)`` / ``[0, 1)``; a product of intervals
``[0, 1) × [0, 1)`` for tuple-valued hyperparameters; a choice ``{a, b}``; anything else is prose
checked by the constructor's own code (matrix shapes, spectral radius, callables).
"""

from __future__ import annotations

import ast
import functools
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import HyperparameterError

REQUIRED = "required"
COMPUTED = "see text"


def spec_dir() -> Path:
    """The installed copy (wheel) or the repository's top-level ``spec/`` (source / editable)."""
    packaged = Path(__file__).with_name("_spec")
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "spec"


# --------------------------------------------------------------------------- domains


def _number(text: str) -> float:
    return float(text.strip().replace("−", "-").replace("∞", "inf"))


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    low_closed: bool
    high_closed: bool

    def __str__(self) -> str:
        def show(x):
            return "∞" if x == math.inf else "-∞" if x == -math.inf else f"{x:g}"

        return f"{'[' if self.low_closed else '('}{show(self.low)}, {show(self.high)}{']' if self.high_closed else ')'}"

    def contains(self, x: float) -> bool:
        if math.isnan(x):
            return False
        above = x >= self.low if self.low_closed else x > self.low
        below = x <= self.high if self.high_closed else x < self.high
        return above and below and math.isfinite(x)

    def check(self, name: str, value) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise HyperparameterError(name, f"must be a real number in {self}, got {value!r}")
        x = float(value)
        if not self.contains(x):
            raise HyperparameterError(name, f"must lie in {self}, got {value!r}")
        return x

    def outside(self) -> list[float]:
        """Values just outside the domain, plus the non-finite ones: the derived error inputs."""
        values = [math.nan]
        if self.low != -math.inf:
            values.append(self.low if not self.low_closed else self.low - max(1e-12, abs(self.low) * 1e-12))
            values.append(self.low - 1.0)
        else:
            values.append(-math.inf)
        if self.high != math.inf:
            values.append(self.high if not self.high_closed else self.high + max(1e-12, abs(self.high) * 1e-12))
        else:
            values.append(math.inf)
        return values


@dataclass(frozen=True)
class Product:
    factors: tuple[Interval, ...]

    def __str__(self) -> str:
        return " × ".join(str(f) for f in self.factors)

    def check(self, name: str, value) -> tuple[float, ...]:
        try:
            items = tuple(value)
        except TypeError:
            raise HyperparameterError(name, f"must be a tuple in {self}, got {value!r}") from None
        if len(items) != len(self.factors):
            raise HyperparameterError(name, f"must have {len(self.factors)} entries in {self}, got {value!r}")
        checked = []
        for i, (factor, item) in enumerate(zip(self.factors, items)):
            try:
                checked.append(factor.check(name, item))
            except HyperparameterError:
                raise HyperparameterError(name, f"entry {i} must lie in {factor}, got {value!r}") from None
        return tuple(checked)


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    def __str__(self) -> str:
        return "{" + ", ".join(self.options) + "}"

    def check(self, name: str, value) -> str:
        if value not in self.options:
            raise HyperparameterError(name, f"must be one of {self}, got {value!r}")
        return value


@dataclass(frozen=True)
class Described:
    """A domain stated in prose; the constructor validates it in code."""

    text: str

    def __str__(self) -> str:
        return self.text

    def check(self, name: str, value):
        return value


_INTERVAL = re.compile(r"^([(\[])\s*([^,]+?)\s*,\s*([^,]+?)\s*([)\]])$")


def parse_domain(text: str):
    text = text.strip().strip("`")
    if text.startswith("{") and text.endswith("}"):
        return Choice(tuple(o.strip() for o in text[1:-1].split(",")))
    parts = [p.strip() for p in text.split("×")]
    intervals = []
    for part in parts:
        match = _INTERVAL.match(part)
        if not match:
            return Described(text)
        try:
            low, high = _number(match[2]), _number(match[3])
        except ValueError:
            return Described(text)
        intervals.append(Interval(low, high, match[1] == "[", match[4] == "]"))
    return intervals[0] if len(intervals) == 1 else Product(tuple(intervals))


def parse_default(text: str):
    text = text.strip().strip("`")
    if text in (REQUIRED, COMPUTED):
        return text
    return ast.literal_eval(text.replace("−", "-"))


# --------------------------------------------------------------------------- pages


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    symbol: str
    domain: object
    default: object
    source: str


@dataclass(frozen=True)
class StateField:
    name: str
    shape: str
    initial: str
    meaning: str


@dataclass(frozen=True)
class Section:
    algo: str
    page: str
    title: str
    text: str
    hyperparameters: tuple[Hyperparameter, ...]
    state_fields: tuple[StateField, ...]

    @property
    def anchor(self) -> str:
        return f"spec/{self.page}#{self.algo}"

    def hyperparameter(self, name: str) -> Hyperparameter:
        for h in self.hyperparameters:
            if h.name == name:
                return h
        raise KeyError(f"{self.algo} has no hyperparameter {name!r} in {self.anchor}")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of ``text``, as rows of stripped cells, separator rows dropped."""
    found, current = [], []
    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            current.append(_cells(line))
        elif current:
            found.append(current)
            current = []
    if current:
        found.append(current)
    return [[row for row in t if not all(set(c) <= set("-: ") for c in row)] for t in found]


def _unquote(cell: str) -> str:
    return cell.strip().strip("`")


_HEADING = re.compile(r"^## `(\w+)`(.*)$", re.MULTILINE)


def _parse_page(path: Path) -> list[Section]:
    text = path.read_text(encoding="utf-8")
    heads = list(_HEADING.finditer(text))
    sections = []
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        rest = text[head.end() : end]
        next_h2 = re.search(r"^## ", rest, re.MULTILINE)
        body = text[head.start() : head.end() + (next_h2.start() if next_h2 else len(rest))]
        hyper, state = [], []
        for table in tables(body):
            header = [c.lower() for c in table[0]]
            if header[0] == "hyperparameter":
                for row in table[1:]:
                    name, symbol, domain, default, source = row[:5]
                    hyper.append(
                        Hyperparameter(_unquote(name), symbol, parse_domain(domain), parse_default(default), source)
                    )
            elif header[0] == "state field":
                for row in table[1:]:
                    state.append(StateField(_unquote(row[0]), row[1], row[2], row[3]))
        sections.append(
            Section(head[1], path.name, head[2].strip(" —-"), body.rstrip() + "\n", tuple(hyper), tuple(state))
        )
    return sections


@functools.cache
def sections() -> dict[str, Section]:
    found = {}
    for path in sorted(spec_dir().glob("*.md")):
        for s in _parse_page(path):
            if s.algo in found:
                raise RuntimeError(f"algorithm {s.algo!r} specified twice: {found[s.algo].anchor} and {s.anchor}")
            found[s.algo] = s
    return found


def section(algo: str) -> Section:
    try:
        return sections()[algo]
    except KeyError:
        raise KeyError(f"no spec section for {algo!r}; known: {', '.join(sorted(sections()))}") from None


def page(name: str) -> str:
    path = spec_dir() / (name if name.endswith(".md") else f"{name}.md")
    if not path.is_file():
        raise KeyError(f"no spec page {name!r} in {spec_dir()}")
    return path.read_text(encoding="utf-8")


def check_hyperparameters(algo: str, **values) -> dict:
    """Validate ``values`` against the domains of ``algo``'s spec table; return them normalised."""
    table = section(algo)
    declared = {h.name for h in table.hyperparameters}
    unknown = set(values) - declared
    if unknown:
        raise TypeError(
            f"{algo}: unknown hyperparameter(s) {sorted(unknown)}; {table.anchor} declares {sorted(declared)}"
        )
    return {name: table.hyperparameter(name).domain.check(name, value) for name, value in values.items()}
