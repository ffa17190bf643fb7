"""The conformance report: algorithm × property, with status, examples tried and the largest
deviation seen (spec/conformance.md#report). Written as text and as JSON by the suite itself."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .. import __version__

STATUS_ORDER = ("failed", "passed", "xfailed", "absent", "skipped")


@dataclass
class Row:
    algo: str
    prop: str
    outcomes: list = field(default_factory=list)
    examples: int = 0
    max_deviation: float = 0.0
    max_ratio: float = 0.0
    tests: list = field(default_factory=list)
    messages: list = field(default_factory=list)

    @property
    def status(self) -> str:
        for status in STATUS_ORDER:
            if status in self.outcomes:
                return status
        return "skipped"


class Report:
    def __init__(self, header: dict):
        self.header = header
        self.rows: dict[tuple[str, str], Row] = {}

    def add(self, algo: str, prop: str, nodeid: str, outcome: str, record, message: str = "") -> None:
        row = self.rows.setdefault((algo, prop), Row(algo, prop))
        row.outcomes.append(outcome)
        row.tests.append(nodeid)
        if record is not None:
            row.examples += record.examples
            row.max_deviation = max(row.max_deviation, record.max_deviation)
            row.max_ratio = max(row.max_ratio, record.max_ratio)
        if message:
            row.messages.append(message)

    def sorted_rows(self, algorithm_order) -> list[Row]:
        rank = {a: i for i, a in enumerate(algorithm_order)}
        return sorted(self.rows.values(), key=lambda r: (rank.get(r.algo, len(rank)), r.algo, r.prop))

    def counts(self) -> dict:
        counts = {s: 0 for s in STATUS_ORDER}
        for row in self.rows.values():
            counts[row.status] += 1
        return counts

    def as_text(self, algorithm_order) -> str:
        rows = self.sorted_rows(algorithm_order)
        head = ("algorithm", "property", "status", "examples", "max deviation", "dev/tol")
        body = [
            (
                r.algo,
                r.prop,
                r.status.upper() if r.status == "failed" else r.status,
                str(r.examples),
                f"{r.max_deviation:.2e}" if r.max_ratio or r.max_deviation else "0",
                f"{r.max_ratio:.3f}" if r.max_ratio else "-",
            )
            for r in rows
        ]
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        counts = self.counts()
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        header = ", ".join(f"{k}={v}" for k, v in self.header.items())
        failures = [f"  {r.algo} {r.prop}: {m}" for r in rows if r.status == "failed" for m in r.messages[:1]]
        return "\n".join(
            [f"stepspec conformance ({header})", *lines, f"{len(rows)} algorithm × property rows: {summary}"]
            + (["failures:", *failures] if failures else [])
        )

    def as_json(self, algorithm_order) -> str:
        return json.dumps(
            {
                "stepspec": __version__,
                **self.header,
                "summary": self.counts(),
                "rows": [
                    {
                        "algorithm": r.algo,
                        "property": r.prop,
                        "status": r.status,
                        "examples": r.examples,
                        "max_deviation": r.max_deviation,
                        "max_deviation_over_tolerance": r.max_ratio,
                        "tests": r.tests,
                        "messages": r.messages,
                    }
                    for r in self.sorted_rows(algorithm_order)
                ],
            },
            indent=2,
        )
