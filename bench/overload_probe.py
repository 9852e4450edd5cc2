"""Probes a live server the way the overload issue (13) found its stalls, and prints the figures.

    python bench/overload_probe.py --engine engines/gemma-4-tiny-it-float32 [--code-root DIR] [--server-args "..."]

Starts `python -m server` (from --code-root: another checkout measures the code before a change) on a
free loopback port and runs, in order: a 5 MB and a 30 MB prompt beside 8 streams (the streams' largest
gap between tokens, the health latency, the server's RSS), 1,000 requests at once, a client-supplied
chat template, 2,000 stop strings with n=8 beside 8 streams, 1,000 prompts x n=16 and a request
behind it, a small random fuzz (5xx and dropped connections), and last SIGTERM with 16 streams in
flight (how many ended with [DONE]). Each figure is printed as one `name: value` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time

import httpx

USER = [{"role": "user", "content": "Hello"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def report(name: str, value) -> None:
    print(f"{name}: {value}", flush=True)


_HEALTH_POLLER = """
import sys, threading, time, http.client
host, port = sys.argv[1].rsplit("/", 1)[-1].split(":")
# Polls until its stdin closes (or for argv[2] seconds), then prints its latencies' worst, median and p99.
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
latencies, end = [], time.monotonic() + float(sys.argv[2])
while time.monotonic() < end and not stop.is_set():
    t0 = time.perf_counter()
    try:
        c = http.client.HTTPConnection(host, int(port), timeout=120)
        c.request("GET", "/v1/health/live")
        c.getresponse().read()
        c.close()
    except OSError:
        pass
    latencies.append(time.perf_counter() - t0)
    time.sleep(0.02)
latencies = sorted(latencies) or [float("nan")]
# worst, then median and 99th percentile (the figure the burst's one worst probe hides)
print(round(latencies[-1], 3), round(latencies[len(latencies) // 2], 4), round(latencies[int(0.99 * (len(latencies) - 1))], 4))
"""


def health_poller(base: str, seconds: float = 600) -> subprocess.Popen:
    """/v1/health/live polled from a process of its own: this one's loop is busy with the clients (and
    with encoding a giant body), which would count in an in-process poller's figure."""
    return subprocess.Popen(
        [sys.executable, "-c", _HEALTH_POLLER, base, str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


class Probe:
    def __init__(self, base: str) -> None:
        self.base = base
        self.client = self.new_client()

    def new_client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
        return httpx.AsyncClient(base_url=self.base, timeout=httpx.Timeout(600, connect=60), limits=limits)

    async def stream(self, body: dict, path: str = "/v1/chat/completions", rec: dict | None = None) -> dict:
        """A stream's arrival times of content events, whether it ended with [DONE], and error events
        (kept in `rec` as they come, so a cancelled reader keeps them)."""
        rec = rec if rec is not None else {}
        times, done, errors = rec.setdefault("times", []), False, 0
        try:
            async with self.client.stream("POST", path, json={**body, "stream": True}) as r:
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        event = json.loads(line[6:])
                        errors += "error" in event
                        times.append(time.perf_counter())
        except httpx.HTTPError:
            pass
        return {"times": times, "done": done, "errors": errors}

    async def beside_streams(self, name: str, work, n_streams: int = 8, max_tokens: int = 4000) -> None:
        """Runs `work()` while n streams decode; prints its time, the streams' largest token gap and
        rate during it, and the worst health latency."""
        body = {"messages": USER, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
        records = [{} for _ in range(n_streams)]
        streams = [asyncio.create_task(self.stream(body, rec=rec)) for rec in records]
        await asyncio.sleep(1.5)
        poller = health_poller(self.base)
        await asyncio.sleep(0.5)  # the poller's interpreter starting
        t0 = time.perf_counter()
        outcome = await work()
        t1 = time.perf_counter()
        worst_health = float((await asyncio.to_thread(poller.communicate, ""))[0].split()[0])
        await self.client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 1})  # flush
        for s in streams:
            s.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        gaps, tokens = [], 0
        for r in records:
            tokens += len([t for t in r["times"] if t0 <= t <= t1])
            gaps += [b - a for a, b in zip(r["times"], r["times"][1:]) if b >= t0 and a <= t1]
        report(f"{name}.result", outcome)
        report(f"{name}.seconds", round(t1 - t0, 3))
        report(f"{name}.max_stream_gap_s", round(max(gaps, default=float("nan")), 3))
        report(f"{name}.streams_tokens_per_s", round(tokens / max(t1 - t0, 1e-9), 1))
        report(f"{name}.max_health_latency_s", round(worst_health, 3))

    async def post(self, body: dict | bytes, path: str = "/v1/chat/completions"):
        try:
            if isinstance(body, bytes):  # encoded beforehand: outside the timed window
                r = await self.client.post(path, content=body, headers={"content-type": "application/json"})
            else:
                r = await self.client.post(path, json=body)
            return r.status_code, r.text[:120]
        except httpx.HTTPError as e:
            return "error", type(e).__name__

    async def giant_prompt(self, megabytes: int, pid: int) -> None:
        before = rss_mb(pid)
        body = {"messages": [{"role": "user", "content": "word " * (megabytes * 1024 * 1024 // 5)}], "max_tokens": 1}
        body = json.dumps(body).encode()
        await self.beside_streams(f"prompt_{megabytes}mb", lambda: self.post(body), max_tokens=4000)
        report(f"prompt_{megabytes}mb.rss_mb_before_after", f"{before:.0f} -> {rss_mb(pid):.0f}")

    async def thousand_at_once(self) -> None:
        # The earlier steps' pool is reused on purpose: its idle keep-alive connections must not race the
        # server's keep-alive timeout (at uvicorn's 5 s, 0-4 of these requests got a ReadError).
        # Health is polled from a process of its own: this one is busy with the 1,000 clients.
        poller = health_poller(self.base, 30)
        t0 = time.perf_counter()

        async def one():
            status, text = await self.post({"messages": USER, "max_tokens": 8})
            return (status if status != "error" else f"error: {text}"), time.perf_counter() - t0

        results = await asyncio.gather(*(one() for _ in range(1000)))
        statuses = {}
        for s, _ in results:
            statuses[s] = statuses.get(s, 0) + 1
        lat = sorted(t for _, t in results)
        report("thousand.statuses", statuses)
        report("thousand.p99_latency_s", round(lat[int(0.99 * len(lat)) - 1], 2))
        worst, median, p99 = poller.communicate()[0].split()
        report("thousand.max_health_latency_s_first_30s", worst)
        report("thousand.health_latency_s_median_p99", f"{median} / {p99}")

    async def template_injection(self) -> None:
        loops = "{% for a in range(300) %}{% for b in range(300) %}{% for c in range(30) %}{% endfor %}{% endfor %}{% endfor %}{{ 7*7 }}"
        body = {"messages": USER, "max_tokens": 1, "chat_template_kwargs": {"chat_template": loops}}
        await self.beside_streams("template", lambda: self.post(body))

    async def stop_strings(self) -> None:
        stops = ["".join(random.choice("abcdefgh") for _ in range(1000)) for _ in range(2000)]
        body = {"messages": USER, "max_tokens": 200, "n": 8, "stop": stops, "ignore_eos": True}
        await self.beside_streams("baseline", lambda: asyncio.sleep(3))
        await self.beside_streams("stop_strings", lambda: self.post(body))

    async def n_amplification(self) -> None:
        body = {"prompt": ["Hello there"] * 1000, "n": 16, "max_tokens": 16}
        big = asyncio.create_task(self.post(body, "/v1/completions"))
        await asyncio.sleep(0.5)
        t0 = time.perf_counter()
        status, _ = await self.post({"messages": USER, "max_tokens": 4})
        report("n_body.normal_request_wait_s", round(time.perf_counter() - t0, 3))
        report("n_body.normal_request_status", status)
        report("n_body.big_request", (await big)[0])

    async def fuzz(self, count: int = 300) -> None:
        rng = random.Random(13)
        weird = [True, None, "\ud800", 2**64, -(2**63) - 1, 1e308, -1, 0, "x" * 10000, [], {}, [1] * 100, 2**63 - 1]
        fields = [
            "model",
            "temperature",
            "top_p",
            "top_k",
            "seed",
            "n",
            "max_tokens",
            "stop",
            "logprobs",
            "top_logprobs",
            "min_p",
            "presence_penalty",
            "stream",
            "messages",
            "tools",
            "tool_choice",
            "chat_template_kwargs",
        ]
        fivexx, dropped = 0, 0
        for _ in range(count):
            body = {"messages": USER, "max_tokens": 2}
            for _ in range(rng.randint(1, 3)):
                body[rng.choice(fields)] = rng.choice(weird)
            raw = json.dumps(body, ensure_ascii=True).encode()
            try:
                r = await self.client.post(
                    "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
                )
                fivexx += r.status_code >= 500
            except httpx.HTTPError:
                dropped += 1
        report("fuzz.bodies", count)
        report("fuzz.5xx", fivexx)
        report("fuzz.dropped_connections", dropped)

    async def sigterm(self, proc: subprocess.Popen) -> None:
        body = {"messages": USER, "max_tokens": 2000, "ignore_eos": True}
        streams = [asyncio.create_task(self.stream(body)) for _ in range(16)]
        await asyncio.sleep(2)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        try:
            ready = (await self.client.get("/v1/health/ready")).status_code
        except httpx.HTTPError as e:
            ready = type(e).__name__
        results = await asyncio.gather(*streams)
        report("sigterm.ready_after_0.2s", ready)
        report("sigterm.streams_with_done", sum(r["done"] for r in results))
        report("sigterm.streams_with_error_event", sum(r["errors"] > 0 for r in results))
        report("sigterm.streams_cut", sum(not r["done"] for r in results))


async def run(args, proc: subprocess.Popen, base: str) -> None:
    probe = Probe(base)
    wanted = set(args.only.split(",")) if args.only else None
    steps = [
        ("idle", lambda: probe.beside_streams("idle", lambda: asyncio.sleep(3))),  # the baseline
        ("giant", lambda: probe.giant_prompt(5, proc.pid)),
        ("giant30", lambda: probe.giant_prompt(30, proc.pid)),
        ("thousand", probe.thousand_at_once),
        ("template", probe.template_injection),
        ("stop", probe.stop_strings),
        ("n", probe.n_amplification),
        ("fuzz", probe.fuzz),
        ("sigterm", lambda: probe.sigterm(proc)),
    ]
    for name, step in steps:
        if wanted is None or name in wanted:
            await step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True)
    p.add_argument("--code-root", default=".", help="the checkout whose server runs")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--server-args", default="")
    p.add_argument(
        "--only", default="", help="comma-separated steps: idle,giant,giant30,thousand,template,stop,n,fuzz,sigterm"
    )
    args = p.parse_args()
    port = free_port()
    root = os.path.abspath(args.code_root)
    env = {**os.environ, "PYTHONPATH": f"{root}:{root}/build", "OMP_NUM_THREADS": "1"}
    cmd = [
        args.python,
        "-m",
        "server",
        "--engine",
        os.path.abspath(args.engine),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--device",
        "cpu",
        *shlex.split(args.server_args),
    ]
    proc = subprocess.Popen(cmd, cwd=root, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(base + "/v1/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        asyncio.run(run(args, proc, base))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
