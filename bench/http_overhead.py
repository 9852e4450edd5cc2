"""HTTP streaming overhead: tokens per second through the OpenAI server against the runtime alone,
and (--triton) through the translator in front of a real tritonserver.

    python -m bench.http_overhead --engine DIR [--streams 32] [--tokens 128] [--triton]

Both runs use the same engine object, the same prompt and `ignore_eos` so every stream produces
exactly --tokens tokens; the server runs in this process (uvicorn thread) like `make serve`. The HTTP
clients run in a process of their own (`--client separate`, the default), as real clients do: in the
server's process (`--client shared`) their parsing takes the interpreter lock from the server and the
engine loop, and the figure measures the bench's client as much as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

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


async def over_http(base_url: str, streams: int, tokens: int) -> tuple[int, float]:
    body = {
        "messages": PROMPT,
        "max_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

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
        start = time.perf_counter()
        counts = await asyncio.gather(*(one(client) for _ in range(streams)))
    return sum(counts), time.perf_counter() - start


def _http_in_child(base_url: str, streams: int, tokens: int) -> tuple[int, float]:
    return asyncio.run(over_http(base_url, streams, tokens))


def http_load(base_url: str, streams: int, tokens: int, client: str) -> tuple[int, float]:
    """`over_http` in this process (`shared`) or in a spawned one (`separate`)."""
    if client == "shared":
        return asyncio.run(over_http(base_url, streams, tokens))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_http_in_child, base_url, 1, 1).result()  # the child's imports, outside the timing
        return pool.submit(_http_in_child, base_url, streams, tokens).result()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.http_overhead")
    p.add_argument("--engine", required=True)
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--triton", action="store_true", help="also measure the translator in front of tritonserver")
    p.add_argument("--repeat", type=int, default=1, help="runtime-alone / HTTP pairs to measure, one after the other")
    p.add_argument(
        "--client",
        choices=("separate", "shared"),
        default="separate",
        help="run the HTTP clients in a process of their own (default) or in the server's",
    )
    args = p.parse_args()

    from bench.uvicorn_thread import UvicornThread
    from server.app import create_app
    from server.backend import EmbeddedBackend
    from server.settings import ServerSettings

    backend = EmbeddedBackend.from_engine_dir(
        args.engine, RuntimeConfig(device=args.device, max_num_seqs=max(args.streams, 1))
    )
    prompt = backend.tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    prompt_ids = backend.tokenizer.encode(prompt, add_special_tokens=False)
    print(f"{args.streams} streams x {args.tokens} tokens, engine {args.engine}, HTTP clients: {args.client} process")
    with UvicornThread(create_app(ServerSettings(), backend)) as server:
        asyncio.run(runtime_alone(backend, prompt_ids, args.streams, 8))  # warm-up
        for _ in range(args.repeat):  # alternated, so a neighbour's load on a shared CPU hits both alike
            # CPU seconds of this process (every thread): unlike tok/s, unmoved by other work on a shared machine.
            cpu = time.process_time()
            n_rt, t_rt = asyncio.run(runtime_alone(backend, prompt_ids, args.streams, args.tokens))
            cpu_rt, cpu = time.process_time() - cpu, time.process_time()
            n_http, t_http = http_load(server.base_url, args.streams, args.tokens, args.client)
            cpu_http = time.process_time() - cpu
            rt, http = n_rt / t_rt, n_http / t_http
            print(
                f"runtime alone          : {n_rt} tokens in {t_rt:.2f} s = {rt:.0f} tok/s, "
                f"{1e3 * cpu_rt / n_rt:.3f} CPU ms/token"
            )
            print(
                f"HTTP, embedded         : {n_http} tokens in {t_http:.2f} s = {http:.0f} tok/s "
                f"({100 * http / rt:.1f}% of the runtime alone), {1e3 * cpu_http / n_http:.3f} CPU ms/token in the server's process",
                flush=True,
            )
    if args.triton:
        n_tr, t_tr = through_triton(args)
        tr = n_tr / t_tr
        print(
            f"HTTP, translator+Triton: {n_tr} tokens in {t_tr:.2f} s = {tr:.0f} tok/s "
            f"({100 * (1 - tr / http):.1f}% fewer than embedded)"
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
            http_load(server.base_url, args.streams, 8, args.client)  # warm-up
            return http_load(server.base_url, args.streams, args.tokens, args.client)
    finally:
        triton.stop()


if __name__ == "__main__":
    main()
