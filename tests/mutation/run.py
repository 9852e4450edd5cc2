"""Mutation run: puts each bug of mutations.py into a temporary copy of the repository, one at a time, runs
the test files that should catch it, and prints which were caught and which survived.

    .venv/bin/python tests/mutation/run.py                    # this tree's tests
    .venv/bin/python tests/mutation/run.py --tests-from main  # the same sources, the tests of git ref `main`
    .venv/bin/python tests/mutation/run.py --only "top_k" --timeout 120 --json out.json

The copy holds the files git tracks plus untracked ones it does not ignore (no .venv, .cache, engines);
the copy's own sources are imported (PYTHONPATH), which the run checks before it starts. With
--tests-from, the copy's tests/ folder is that ref's, so the sources are the same and only the tests
differ: the "before" of a change to the tests. A mutant is caught when its tests fail; a timeout is reported apart (a mutant
that hangs the tests, or a machine too loaded for the limit: rerun it with a longer --timeout);
test files the tests folder lacks are left out (a mutant with none left survives as "no tests").
Before any mutant, the untouched copy must pass every test file the run uses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutations import MUTATIONS, Mutation  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Outcome:
    name: str
    issue20: bool
    result: str  # caught, survived, timeout, no tests
    seconds: float
    tests: tuple[str, ...]


def copy_tree(src: Path, dst: Path, tests_from: str | None) -> None:
    files = (
        subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src, check=True, capture_output=True)
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        if (src / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    if tests_from:
        shutil.rmtree(dst / "tests")
        archive = subprocess.run(
            ["git", "archive", tests_from, "tests"], cwd=src, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)
        # the runner itself stays this tree's
        shutil.copytree(src / "tests" / "mutation", dst / "tests" / "mutation", dirs_exist_ok=True)


def environment(root: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    # the copy's packages first: the editable install would otherwise import the original tree's
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "build")])
    return env


def check_imports(root: Path, python: str) -> None:
    code = "import gemma_runtime, engine_builder, server; print(gemma_runtime.__file__, engine_builder.__file__, server.__file__)"
    out = subprocess.run(
        [python, "-c", code], cwd=root, env=environment(root), capture_output=True, text=True, check=True
    ).stdout
    for path in out.split():
        if not Path(path).resolve().is_relative_to(root.resolve()):
            raise SystemExit(f"the copy imports {path}, not its own sources")


def run_tests(root: Path, python: str, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    start = time.monotonic()
    cmd = [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(cmd, cwd=root, env=environment(root), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start, ""
    return (
        ("passed" if proc.returncode == 0 else "failed"),
        time.monotonic() - start,
        proc.stdout[-3000:] + proc.stderr[-2000:],
    )


def end_leftovers(root: Path) -> list[int]:
    """Kills processes still running from the copy (a mutant may leave a tritonserver stub behind)."""
    killed = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed


def apply(root: Path, m: Mutation) -> str:
    path = root / m.file
    original = path.read_text()
    if original.count(m.old) != 1:
        raise SystemExit(f"{m.name}: the old snippet occurs {original.count(m.old)} times in {m.file}")
    path.write_text(original.replace(m.old, m.new))
    return original


def mutate_and_test(root: Path, python: str, m: Mutation, timeout: float) -> Outcome:
    tests = tuple(t for t in m.tests if (root / t).is_file())
    if not tests:
        return Outcome(m.name, m.issue20, "no tests", 0.0, ())
    original = apply(root, m)
    try:
        status, seconds, _ = run_tests(root, python, tests, timeout)
    finally:
        (root / m.file).write_text(original)
        if end_leftovers(root):
            print(f"   ({m.name}: killed processes it left behind)", flush=True)
    result = {"failed": "caught", "timeout": "timeout", "passed": "survived"}[status]
    return Outcome(m.name, m.issue20, result, seconds, tests)


def table(outcomes: list[Outcome], label: str) -> str:
    caught = sum(o.result == "caught" for o in outcomes)
    timeouts = sum(o.result == "timeout" for o in outcomes)
    lines = [
        f"### {label}: {caught} of {len(outcomes)} caught, {timeouts} timed out",
        "",
        "| mutation | issue 20 | result | seconds | tests |",
        "| --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        tests = ", ".join(Path(t).name for t in o.tests) or "-"
        lines.append(f"| {o.name} | {'yes' if o.issue20 else ''} | {o.result} | {o.seconds:.0f} | {tests} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--tests-from", default=None, help="git ref whose tests/ folder is used (the sources stay this tree's)"
    )
    p.add_argument("--only", nargs="*", default=None, help="run the mutations whose names contain one of these")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant's test run")
    p.add_argument("--json", default=None, help="write the outcomes here")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--part", default=None, help="K/N: every Nth mutation from the Kth (runs split across processes)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (when it was checked already)")
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(s in m.name for s in args.only)]
    if args.part:
        k, n = map(int, args.part.split("/"))
        chosen = chosen[k - 1 :: n]
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        root = Path(tmp) / "repo"
        copy_tree(REPO_ROOT, root, args.tests_from)
        # tests read reference files from the folder beside the checkout (tests/unit/test_parsers_tool_calls.py)
        if (REPO_ROOT.parent / "shared").is_dir():
            (Path(tmp) / "shared").symlink_to(REPO_ROOT.parent / "shared")
        check_imports(root, args.python)
        used = tuple(dict.fromkeys(t for m in chosen for t in m.tests if (root / t).is_file()))
        if not args.no_baseline:
            status, seconds, log = run_tests(root, args.python, used, args.timeout * 3)
            print(f">> unmutated copy: {status} in {seconds:.0f} s ({len(used)} test files)", flush=True)
            if status != "passed":
                print(log, file=sys.stderr)
                return 2
        outcomes = []
        for m in chosen:
            outcomes.append(mutate_and_test(root, args.python, m, args.timeout))
            o = outcomes[-1]
            print(f">> {o.result:16s} {o.seconds:6.0f} s  {o.name}", flush=True)
    label = f"tests of {args.tests_from}" if args.tests_from else "this tree's tests"
    label += f" (part {args.part})" if args.part else ""
    print("\n" + table(outcomes, label))
    if args.json:
        Path(args.json).write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
