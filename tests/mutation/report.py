"""The mutation run's before/after table from the JSON files run.py wrote (the parts of each side merged):

    .venv/bin/python tests/mutation/report.py --before tests/mutation/results/before-*.json \
        --after tests/mutation/results/after-*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutations import MUTATIONS  # noqa: E402


def merged(paths: list[str]) -> tuple[dict[str, dict], list[str]]:
    """Outcomes by mutant name across the parts, and the tests deselected (failing unmutated) in any."""
    outcomes, deselected = {}, []
    for path in paths:
        data = json.loads(Path(path).read_text())
        outcomes.update({o["name"]: o for o in data["outcomes"]})
        deselected += [d for d in data["deselected"] if d not in deselected]
    return outcomes, deselected


def cell(o: dict | None) -> str:
    if o is None:
        return "not run yet"
    if o["result"] == "caught":
        return f"caught by {o['caught_by'].split('/')[-1]} ({o['seconds']:.0f} s)"
    return f"{o['result']} ({o['seconds']:.0f} s)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", nargs="+", required=True)
    p.add_argument("--after", nargs="+", required=True)
    args = p.parse_args(argv)
    before, before_off = merged(args.before)
    after, after_off = merged(args.after)
    counts = {side: sum(o["result"] == "caught" for o in outs.values()) for side, outs in (("b", before), ("a", after))}
    print(f"caught: before {counts['b']} of {len(before)}, after {counts['a']} of {len(after)}\n")
    print("| mutation | issue 20 | before | after |\n| --- | --- | --- | --- |")
    for m in MUTATIONS:
        print(f"| {m.name} | {'yes' if m.issue20 else ''} | {cell(before.get(m.name))} | {cell(after.get(m.name))} |")
    for side, off in (("before", before_off), ("after", after_off)):
        if off:
            print(f"\n{side}: deselected (fail on the unmutated copy): " + ", ".join(off))
    return 0


if __name__ == "__main__":
    sys.exit(main())
