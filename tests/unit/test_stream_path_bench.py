"""bench/stream_path.py: the server's event-loop cost per streamed token with the model taken out, beside a
bare ASGI app's over the same engine (the floor). Run whole over real HTTP on a real engine's tokenizer."""

from __future__ import annotations

import re
import subprocess
import sys


def test_both_apps_are_measured_and_the_difference_is_printed(random_tiny_engine_dir):
    argv = [
        "--engine",
        str(random_tiny_engine_dir),
        "--streams",
        "3",
        "--tokens",
        "6",
        "--repeat",
        "2",
        "--step-ms",
        "1",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.stream_path", *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = dict(re.findall(r"^(bare ASGI|server): event loop ([\d.]+) us per token", proc.stdout, re.M))
    assert set(figures) == {"bare ASGI", "server"}, proc.stdout
    assert "us per token above the floor" in proc.stdout.splitlines()[-1]
