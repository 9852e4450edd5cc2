"""The mutation run's temporary copy: making it, putting one mutant in, running pytest there with a time
limit, and ending whatever a test run left behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mutations import Mutation

REPO_ROOT = Path(__file__).resolve().parents[2]
# `-rfE` summary lines: "FAILED <node id> - <message>" (a node id may hold spaces, from parametrize ids)
# Modules moved since the older tests a --tests-from run may use (c50d712's, before the layout change;
# `git diff -M --name-status c50d712`): only their module paths are rewritten, so those tests import today's
# sources and nothing else in them changes. Tests that already use the new paths are left as they are.
MOVED_MODULES = {
    "gemma_runtime.async_engine": "gemma_runtime.engine.async_engine",
    "gemma_runtime.llm_engine": "gemma_runtime.engine.llm_engine",
    "gemma_runtime.engine_config": "gemma_runtime.engine_format.spec",
    "gemma_runtime.weights": "gemma_runtime.engine_format.weights",
    "gemma_runtime.decode_graphs": "gemma_runtime.executor.decode_graphs",
    "gemma_runtime.device_block_tables": "gemma_runtime.executor.device_block_tables",
    "gemma_runtime.device_io": "gemma_runtime.executor.device_io",
    "gemma_runtime.model_runner": "gemma_runtime.executor.model_runner",
    "gemma_runtime.sampler": "gemma_runtime.executor.sampler",
    "gemma_runtime.detokenizer": "gemma_runtime.inputs.detokenizer",
    "gemma_runtime.vision.preprocess": "gemma_runtime.inputs.image_preprocess",
    "gemma_runtime.inputs": "gemma_runtime.inputs.processor",
    "gemma_runtime.forward_batch": "gemma_runtime.model.forward_batch",
    "gemma_runtime.vision.encoder": "gemma_runtime.model.vision_encoder",
    "gemma_runtime.block_manager": "gemma_runtime.scheduling.block_manager",
    "gemma_runtime.scheduler": "gemma_runtime.scheduling.scheduler",
    "gemma_runtime.sequence": "gemma_runtime.scheduling.sequence",
    "engine_builder.tiny_checkpoint": "engine_builder.tiny.random_checkpoint",
    "engine_builder.taught_tiny": "engine_builder.tiny.taught",
    "engine_builder.taught_corpus": "engine_builder.tiny.taught_corpus",
    "engine_builder.tiny_tokenizer": "engine_builder.tiny.tokenizer",
    "engine_builder.memcheck": "engine_builder.tools.memcheck",
    "server.uvicorn_thread": "bench.uvicorn_thread",
    "server.generation": "server.streams",
    "server.triton_backend": "triton_bridge.client",
    "server.triton_launcher": "triton_bridge.launcher",
    "server.triton_protocol": "triton_bridge.protocol",
}
# a whole module path only: not a prefix of a longer one (gemma_runtime.inputs vs gemma_runtime.inputs.processor)
_MOVED = re.compile(r"(?<![\w.])(" + "|".join(re.escape(m) for m in MOVED_MODULES) + r")(?![\w.])")
_FAILED = re.compile(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", re.MULTILINE)


@dataclass(frozen=True)
class TestRun:
    status: str  # passed, failed, timeout, skipped (every selected test skipped or none collected)
    seconds: float
    failures: tuple[str, ...]  # pytest node ids (a bare file for a collection error)
    log: str

    @property
    def first_failure(self) -> str:
        return self.failures[0] if self.failures else ""


def make_copy(tmp: Path, src: Path, tests_from: str | None) -> Path:
    """The files git tracks plus untracked ones it does not ignore; with tests_from, that ref's tests/."""
    root = tmp / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src, check=True, capture_output=True
    ).stdout.decode()
    for rel in filter(None, files.split("\0")):
        if (src / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, root / rel)
    if tests_from:
        shutil.rmtree(root / "tests")
        archive = subprocess.run(["git", "archive", tests_from, "tests"], cwd=src, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
        for path in (root / "tests").rglob("*.py"):
            text = path.read_text()
            path.write_text(_MOVED.sub(lambda hit: MOVED_MODULES[hit.group(1)], text))
        # the runner itself stays this tree's
        shutil.copytree(src / "tests" / "mutation", root / "tests" / "mutation", dirs_exist_ok=True)
    # tests read reference files from the folder beside the checkout (tests/unit/test_parsers_tool_calls.py)
    if (src.parent / "shared").is_dir():
        (tmp / "shared").symlink_to(src.parent / "shared")
    return root


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


def _status(returncode: int, log: str) -> str:
    if returncode in (1, 2):  # tests failed; 2: interrupted, as a collection error does (-x)
        return "failed"
    if returncode == 5 or (returncode == 0 and not re.search(r"\b\d+ passed", log)):
        return "skipped"
    if returncode == 0:
        return "passed"
    raise SystemExit(f"pytest exited with {returncode}:\n{log[-3000:]}")


def run_tests(
    root: Path, python: str, tests: tuple[str, ...], timeout: float, deselect: tuple[str, ...], stop_at_first=True
) -> TestRun:
    """pytest in the copy, in a session of its own so a timeout ends the whole tree it started."""
    skip = [a for d in deselect for a in (("--deselect", d) if "::" in d else ("--ignore", d))]
    cmd = [python, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *(["-x"] if stop_at_first else [])]
    start = time.monotonic()
    proc = subprocess.Popen(
        [*cmd, *skip, *tests],
        cwd=root,
        env=environment(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        return TestRun("timeout", time.monotonic() - start, (), log)
    failures = tuple(dict.fromkeys(_FAILED.findall(log)))
    return TestRun(_status(proc.returncode, log), time.monotonic() - start, failures, log)


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
    """Puts the mutant in; returns the file's original text, to put back."""
    path = root / m.file
    original = path.read_text()
    if original.count(m.old) != 1:
        raise SystemExit(f"{m.name}: the old snippet occurs {original.count(m.old)} times in {m.file}")
    path.write_text(original.replace(m.old, m.new))
    return original
