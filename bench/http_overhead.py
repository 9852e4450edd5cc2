"""HTTP streaming overhead: tokens per second through the OpenAI server against the runtime alone,
and (--triton) through the translator in front of a real tritonserver.

    python -m bench.http_overhead --engine DIR [--streams 32] [--tokens 128] [--triton]

Both runs use the same engine object, the same prompt and `ignore_eos` so every stream produces
exactly --tokens tokens; the server runs in this process (uvicorn thread) like `make serve`. The HTTP
clients run in a process of their own (`--client separate`, the default), as real clients do: in the
server's process (`--client shared`) their parsing takes the interpreter lock from the server and the
engine loop, and the figure measures the bench's client as much as the server. They read raw bytes while
the clock runs and parse every event after it stops (`--reader raw`, bench/sse_load.py): on a 2-core
machine an SDK-style reader (`--reader httpx`, a parse per chunk) spent twice the server's CPU per token on
the cores the server needs. The runtime-alone reader runs on uvloop, as the server's event loop does.

Each --repeat is one pair (runtime alone, HTTP), interleaved in ABBA order, printed as a line; the summary
gives the median share of the rate over the pairs and the share by CPU time (the runtime's CPU ms per token
over the HTTP path's, in the server's process), which a neighbour's load on a shared machine barely moves.
Each line also splits the HTTP run's CPU by thread: the engine loop's, and the server's event loop's (the
uvicorn thread: parsing, SSE serialisation, socket writes) in microseconds per token, the HTTP path's own
cost, which the clients' and the engine's contention for the cores moves least of all; and the clients'
process's CPU per token while the streams ran.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass

import httpx

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig

PROMPT = [{"role": "user", "content": "Hello!"}]


async def runtime_alone(backend, prompt_ids: list[int], streams: int, tokens: int) -> tuple[int, float]:
    async def one(i: int) -> int:
        sampling = SamplingParams(max_tokens=tokens, ignore_eos=True)
        n = 0
        async for out in backend.generate(GenerateRequest(f"bench-{i}-{time.monotonic_ns()}", prompt_ids, sampling)):
            n += len(out.token_ids)
        return n

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(streams)))
    return sum(counts), time.perf_counter() - start


def on_uvloop(coro):
    """Runs the runtime-alone reader on the loop the server's event loop runs on (uvloop where installed):
    the two sides then differ by HTTP only, not by their event loop's own cost per wake-up."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def over_http(base_url: str, streams: int, tokens: int, reader: str) -> tuple[int, float, float]:
    """`streams` concurrent streamed chat completions of `tokens` tokens each: the tokens they carried, the
    seconds until the last ended, and this process's CPU seconds meanwhile. `raw` reads bytes only while
    the clock runs (bench/sse_load.py); `httpx` parses every chunk as it arrives, as an SDK does."""
    body = {
        "messages": PROMPT,
        "max_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if reader == "raw":
        from bench.sse_load import completion_tokens, stream_many

        cpu = time.process_time()
        responses, seconds = await stream_many(base_url, body, streams)
        cpu = time.process_time() - cpu
        return sum(completion_tokens(r) for r in responses), seconds, cpu

    async def one(client: httpx.AsyncClient) -> int:
        n = 0
        async with client.stream("POST", base_url + "/v1/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        n = chunk["usage"]["completion_tokens"]
        return n

    limits = httpx.Limits(max_connections=streams)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        cpu, start = time.process_time(), time.perf_counter()
        counts = await asyncio.gather(*(one(client) for _ in range(streams)))
    return sum(counts), time.perf_counter() - start, time.process_time() - cpu


def _http_in_child(base_url: str, streams: int, tokens: int, reader: str) -> tuple[int, float, float]:
    return asyncio.run(over_http(base_url, streams, tokens, reader))


def http_load(base_url: str, streams: int, tokens: int, client: str, reader: str) -> tuple[int, float, float]:
    """`over_http` in this process (`shared`) or in a spawned one (`separate`): tokens, seconds, and the
    clients' CPU seconds (0 when they share this process, whose CPU is counted whole)."""
    if client == "shared":
        return *asyncio.run(over_http(base_url, streams, tokens, reader))[:2], 0.0
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_http_in_child, base_url, 1, 1, reader).result()  # the child's imports, outside the timing
        return pool.submit(_http_in_child, base_url, streams, tokens, reader).result()


THREAD_GROUPS = ("engine", "event_loop", "worker")  # worker: the engine's own process (--engine-process)


def _stat_cpu_s(path: str) -> float:
    """utime + stime of a /proc stat file, in seconds."""
    import os

    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_s(worker_pid: int | None = None) -> dict[tuple[str, int], float]:
    """CPU seconds so far of each live engine-loop and uvicorn thread of this process, keyed by
    (group, native thread id) (Linux: /proc/self/task); with `worker_pid` (--engine-process), that whole
    process as the group "worker"."""
    import threading

    found = {}
    if worker_pid is not None:
        found[("worker", worker_pid)] = _stat_cpu_s(f"/proc/{worker_pid}/stat")
    for thread in threading.enumerate():
        group = (
            "engine" if thread.name == "engine-loop" else "event_loop" if thread.name.startswith("uvicorn") else None
        )
        if group is None:
            continue
        try:
            found[(group, thread.native_id)] = _stat_cpu_s(f"/proc/self/task/{thread.native_id}/stat")
        except (OSError, TypeError):
            continue  # the thread ended meanwhile
    return found


def cpu_by_group(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds each group spent between two thread_cpu_s() readings (a thread born in between counts
    from zero; one that ended in between is left out rather than subtracted)."""
    spent = dict.fromkeys(THREAD_GROUPS, 0.0)
    for (group, tid), seconds in after.items():
        spent[group] += seconds - before.get((group, tid), 0.0)
    return spent


@dataclass(frozen=True)
class Run:
    tokens: int
    seconds: float
    cpu_s: float  # this process's CPU time (server, engine, uvicorn threads; not a separate client)
    threads: dict  # cpu_by_group() over the run: engine loop and uvicorn event loop
    client_cpu_s: float = 0.0  # the HTTP clients' own process (--client separate)

    def us_per_token(self, group: str) -> float:
        if group == "engine":  # its loop's thread here, or its own process (the other one idles meanwhile)
            return 1e6 * (self.threads.get("engine", 0.0) + self.threads.get("worker", 0.0)) / self.tokens
        return 1e6 * self.threads.get(group, 0.0) / self.tokens

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    @property
    def cpu_ms_per_token(self) -> float:
        return 1e3 * self.cpu_s / self.tokens


@dataclass(frozen=True)
class Pair:
    runtime: Run
    http: Run

    def line(self) -> str:
        rt, http = self.runtime, self.http
        return (
            f"runtime alone {rt.rate:.0f} tok/s ({rt.cpu_ms_per_token:.3f} CPU ms/token) | "
            f"HTTP {http.rate:.0f} tok/s ({http.cpu_ms_per_token:.3f} CPU ms/token) = "
            f"{100 * http.rate / rt.rate:.1f}% of the rate, {100 * rt.cpu_ms_per_token / http.cpu_ms_per_token:.1f}% by CPU; "
            f"HTTP run per token: engine loop {http.us_per_token('engine'):.0f} us, "
            f"event loop {http.us_per_token('event_loop'):.0f} us, clients {1e6 * http.client_cpu_s / http.tokens:.0f} us"
        )


def summary(pairs: list[Pair]) -> str:
    """The verdict over every pair: the median share of the rate (one noisy pair moves it little), and
    the CPU-time share (the runtime's CPU ms per token over the HTTP path's, in the server's process),
    which other work on a shared machine barely moves."""
    rate_shares = [p.http.rate / p.runtime.rate for p in pairs]
    rt_cpu = statistics.median(p.runtime.cpu_ms_per_token for p in pairs)
    http_cpu = statistics.median(p.http.cpu_ms_per_token for p in pairs)
    loop = statistics.median(p.http.us_per_token("event_loop") for p in pairs)
    engine = statistics.median(p.http.us_per_token("engine") for p in pairs)
    return (
        f"summary over {len(pairs)} pairs: HTTP keeps {100 * statistics.median(rate_shares):.1f}% of the runtime's rate "
        f"(median; mean {100 * statistics.mean(rate_shares):.1f}%, range {100 * min(rate_shares):.1f}-{100 * max(rate_shares):.1f}%), "
        f"CPU ms/token {http_cpu:.3f} (HTTP) vs {rt_cpu:.3f} (runtime alone) = {100 * rt_cpu / http_cpu:.1f}% by CPU; "
        f"the server's event loop {loop:.0f} us per token beside the engine loop's {engine:.0f} "
        f"({100 * loop / (loop + engine):.1f}% of the two)"
    )


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.http_overhead")
    p.add_argument("--engine", required=True)
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--triton", action="store_true", help="also measure the translator in front of tritonserver")
    p.add_argument("--repeat", type=int, default=1, help="runtime-alone / HTTP pairs to measure, interleaved (ABBA)")
    p.add_argument(
        "--client",
        choices=("separate", "shared"),
        default="separate",
        help="run the HTTP clients in a process of their own (default) or in the server's",
    )
    p.add_argument(
        "--reader",
        choices=("raw", "httpx"),
        default="raw",
        help="the clients read raw bytes and parse after the clock stops (default, bench/sse_load.py) "
        "or parse every chunk as it arrives with httpx, as an SDK does",
    )
    p.add_argument(
        "--engine-process",
        action="store_true",
        help="the engine loop in a process of its own (python -m server --engine-process), for both sides",
    )
    args = p.parse_args()

    from bench.uvicorn_thread import UvicornThread
    from server.app import create_app
    from server.backend import EmbeddedBackend
    from server.settings import ServerSettings

    config = RuntimeConfig(device=args.device, max_num_seqs=max(args.streams, 1))
    # With --engine-process both sides read the same worker: the runtime alone is its own rate as this
    # process receives it, and HTTP adds only the server.
    backend = EmbeddedBackend.from_engine_dir(args.engine, config, engine_process=args.engine_process)
    worker = backend.engine.engine.process.pid if args.engine_process else None
    prompt = backend.tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    prompt_ids = backend.tokenizer.encode(prompt, add_special_tokens=False)
    print(
        f"{args.streams} streams x {args.tokens} tokens, engine {args.engine}, HTTP clients: {args.client} process, "
        f"engine loop: {'its own process' if worker else 'a thread of this process'}"
    )
    pairs: list[Pair] = []
    with UvicornThread(create_app(ServerSettings(), backend)) as server:
        on_uvloop(runtime_alone(backend, prompt_ids, args.streams, 8))  # warm-up
        http_load(server.base_url, args.streams, 8, args.client, args.reader)  # warm-up
        for i in range(args.repeat):
            # Interleaved, and in ABBA order (even pairs runtime first, odd pairs HTTP first): a neighbour's
            # load on a shared CPU, and its drift within a pair, hit both sides alike.
            runs = {}
            for side in ("runtime", "http") if i % 2 == 0 else ("http", "runtime"):
                # CPU seconds of this process (every thread): unlike tok/s, unmoved by other work on a shared machine.
                cpu, threads, client_cpu = time.process_time(), thread_cpu_s(worker), 0.0
                if side == "runtime":
                    n, t = on_uvloop(runtime_alone(backend, prompt_ids, args.streams, args.tokens))
                else:
                    n, t, client_cpu = http_load(server.base_url, args.streams, args.tokens, args.client, args.reader)
                spent = cpu_by_group(threads, thread_cpu_s(worker))
                cpu = time.process_time() - cpu + spent["worker"]  # the engine's own process, if any
                runs[side] = Run(n, t, cpu, spent, client_cpu)
            pair = Pair(runs["runtime"], runs["http"])
            pairs.append(pair)
            print(pair.line(), flush=True)
    print(summary(pairs), flush=True)
    if args.triton:
        n_tr, t_tr = through_triton(args)
        tr = n_tr / t_tr
        http = statistics.median(p.http.rate for p in pairs)
        print(
            f"HTTP, translator+Triton: {n_tr} tokens in {t_tr:.2f} s = {tr:.0f} tok/s "
            f"({100 * (1 - tr / http):.1f}% fewer than embedded's median)"
        )


def through_triton(args) -> tuple[int, float]:
    """The same HTTP load on `make serve BACKEND=triton://...` in front of `make triton` (same process
    tree as in production: tritonserver with the Python backend, the translator over gRPC streaming)."""
    import socket

    from bench.uvicorn_thread import UvicornThread
    from server.app import create_app
    from server.settings import ServerSettings
    from triton_bridge.client import TritonBackend
    from triton_bridge.launcher import TritonPorts, start_triton

    socks = [socket.socket() for _ in range(3)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = TritonPorts(*(sock.getsockname()[1] for sock in socks))
    for sock in socks:
        sock.close()
    triton = start_triton(
        args.engine,
        ports,
        runtime_config={"device": args.device, "max_num_seqs": max(args.streams, 1)},
        record_engine_path=False,
    )
    try:
        backend = TritonBackend.from_uri(triton.backend_uri, engine_dir=args.engine)
        with UvicornThread(create_app(ServerSettings(), backend)) as server:
            http_load(server.base_url, args.streams, 8, args.client, args.reader)  # warm-up
            return http_load(server.base_url, args.streams, args.tokens, args.client, args.reader)[:2]
    finally:
        triton.stop()


if __name__ == "__main__":
    main()
