"""The mutation run's outcomes: one per mutant, kept in a JSON file rewritten after every mutant (so a run
cut short keeps what it finished), and printed as a markdown table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Outcome:
    name: str
    issue20: bool
    result: str  # caught, survived, timeout, not run, no tests
    seconds: float
    tests: tuple[str, ...]  # the test files run (both tiers when the first let the mutant through)
    caught_by: str = ""  # the first failing test's node id


@dataclass
class Results:
    label: str
    tests_from: str | None
    path: Path | None
    deselected: tuple[str, ...] = ()  # tests that fail on the unmutated copy
    checked: tuple[str, ...] = ()  # test files the unmutated copy has run
    outcomes: list[Outcome] = field(default_factory=list)

    def load(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        data = json.loads(self.path.read_text())
        self.deselected = tuple(data.get("deselected", ()))
        self.checked = tuple(data.get("checked", ()))
        self.outcomes = [Outcome(**{**o, "tests": tuple(o["tests"])}) for o in data["outcomes"]]

    def has(self, name: str) -> bool:
        return any(o.name == name for o in self.outcomes)

    def add(self, outcome: Outcome) -> None:
        self.outcomes = [o for o in self.outcomes if o.name != outcome.name] + [outcome]
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "label": self.label,
            "tests_from": self.tests_from,
            "deselected": list(self.deselected),
            "checked": list(self.checked),
            "outcomes": [asdict(o) for o in self.outcomes],
        }
        self.path.write_text(json.dumps(data, indent=1) + "\n")


def table(outcomes: list[Outcome], label: str) -> str:
    caught = sum(o.result == "caught" for o in outcomes)
    timeouts = sum(o.result == "timeout" for o in outcomes)
    lines = [
        f"### {label}: {caught} of {len(outcomes)} caught, {timeouts} timed out",
        "",
        "| mutation | issue 20 | result | seconds | caught by |",
        "| --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        lines.append(f"| {o.name} | {'yes' if o.issue20 else ''} | {o.result} | {o.seconds:.0f} | {o.caught_by} |")
    return "\n".join(lines)
