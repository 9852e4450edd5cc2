"""Mutation run: puts each bug of mutations.py into a temporary copy of the repository, one at a time, runs
the tests that should catch it, and prints which were caught and which survived.

    .venv/bin/python tests/mutation/run.py --json tests/mutation/results/after.json            # this tree's tests
    .venv/bin/python tests/mutation/run.py --tests-from c50d712 --json before.json  # the same sources, older tests
    .venv/bin/python tests/mutation/run.py --only "top_k" --timeout 120 --part 2/3 --resume --json out.json
    .venv/bin/python tests/mutation/run.py --tiers broader --only "top_k" --json parity.json  # a first-tier survivor
    .venv/bin/python tests/mutation/report.py --before before*.json --after after*.json   # the joined table

The copy holds the files git tracks plus untracked ones it does not ignore (no .venv, .cache, engines);
the copy's own sources are imported (PYTHONPATH), which the run checks before it starts. With
--tests-from, the copy's tests/ folder is that ref's, so the sources are the same and only the tests
differ: the "before" of a change to the tests.

Each mutant runs its first tier (the smallest set of fast tests that should catch it, cheapest first,
pytest -x so the first failure ends the run); only a mutant that survives it runs its broader tier, if it
has one. Outcomes: caught (with the first failing test), survived, timeout (the tests ran past the limit:
a hang or a loaded machine, never counted as caught), not run (every selected test skipped), no tests
(the tests folder lacks all its files). Before any mutant, the untouched copy runs every test the part
uses (a broader tier's, when a survivor first needs it); a test that fails there cannot judge a mutant,
so it is deselected and listed in the results.
Outcomes are written to --json after every mutant, so a part cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutations import MUTATIONS, Mutation  # noqa: E402
from results import Outcome, Results, table  # noqa: E402
from workspace import REPO_ROOT, apply, check_imports, end_leftovers, make_copy, run_tests  # noqa: E402


def existing(root: Path, tests: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t for t in tests if (root / t).is_file())


def baseline(root: Path, python: str, tests: tuple[str, ...], timeout: float, results: Results) -> bool:
    """Runs the unmutated copy's tests (all of them, no -x); the ones that fail are deselected from then on,
    since they cannot judge a mutant. False when the run timed out."""
    todo = tuple(t for t in tests if t not in results.checked)
    if not todo:
        return True
    run = run_tests(root, python, todo, timeout, results.deselected, stop_at_first=False)
    print(f">> unmutated copy: {run.status} in {run.seconds:.0f} s ({len(todo)} test files)", flush=True)
    if run.status == "timeout":
        return False
    for nodeid in run.failures:
        print(f"   fails unmutated, deselected: {nodeid}", flush=True)
    results.deselected = tuple(sorted(set(results.deselected) | set(run.failures)))
    results.checked = tuple(results.checked) + todo
    results.save()
    return True


def mutate_and_test(root: Path, python: str, m: Mutation, timeout: float, results: Results, which: str) -> Outcome:
    """which: both tiers (the broader only for a survivor of the first), the first, or the broader alone."""
    first = existing(root, m.tests) if which in ("both", "first") else ()
    broader = existing(root, m.broader) if which in ("both", "broader") else ()
    tiers = [t for t in (first, broader) if t]
    if not tiers:
        return Outcome(m.name, m.issue20, "no tests", 0.0, ())
    seconds, ran = 0.0, ()
    for tests in tiers:
        # the broader tier's baseline is run only when a survivor first needs it (it is the slow one)
        if not baseline(root, python, tests, (m.timeout or timeout) * 4, results):
            return Outcome(m.name, m.issue20, "timeout", seconds, ran, "the unmutated copy's run timed out")
        original = apply(root, m)
        try:
            run = run_tests(root, python, tests, m.timeout or timeout, results.deselected)
        finally:
            (root / m.file).write_text(original)
            if end_leftovers(root):
                print(f"   ({m.name}: killed processes it left behind)", flush=True)
        seconds, ran = seconds + run.seconds, ran + tests
        if run.status != "passed":
            break
    result = {"failed": "caught", "timeout": "timeout", "passed": "survived", "skipped": "not run"}[run.status]
    return Outcome(m.name, m.issue20, result, seconds, ran, run.first_failure)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--tests-from", default=None, help="git ref whose tests/ folder is used (the sources stay this tree's)"
    )
    p.add_argument("--only", nargs="*", default=None, help="run the mutations whose names contain one of these")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per tier of a mutant's tests")
    p.add_argument("--json", default=None, help="write the outcomes here (after every mutant)")
    p.add_argument(
        "--resume", action="store_true", help="keep the outcomes in --json (but those --only names), run the rest"
    )
    p.add_argument(
        "--tiers",
        choices=("both", "first", "broader"),
        default="both",
        help="first: survivors skip the broader tier; broader: only it (for the survivors of a 'first' run)",
    )
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--part", default=None, help="K/N: every Nth mutation from the Kth (runs split across processes)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (when it was checked already)")
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(s in m.name for s in args.only)]
    if args.part:
        k, n = map(int, args.part.split("/"))
        chosen = chosen[k - 1 :: n]
    label = f"tests of {args.tests_from}" if args.tests_from else "this tree's tests"
    results = Results(label, args.tests_from, Path(args.json) if args.json else None)
    if args.resume:
        results.load()
        chosen = [m for m in chosen if args.only or not results.has(m.name)]
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        root = make_copy(Path(tmp), REPO_ROOT, args.tests_from)
        check_imports(root, args.python)
        used = tuple(dict.fromkeys(t for m in chosen for t in existing(root, m.tests) if args.tiers != "broader"))
        if args.no_baseline:
            results.checked = tuple(results.checked) + used + tuple(t for m in chosen for t in m.broader)
        elif not baseline(root, args.python, used, args.timeout * 4, results):
            return 2
        for m in chosen:
            o = mutate_and_test(root, args.python, m, args.timeout, results, args.tiers)
            results.add(o)
            print(f">> {o.result:9s} {o.seconds:6.0f} s  {o.name}  {o.caught_by}", flush=True)
    print("\n" + table(results.outcomes, label + (f" (part {args.part})" if args.part else "")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
