"""The server's own cost per streamed token, with the model taken out: the event loop's CPU per token when
the engine's step costs nothing but a sleep, against a bare ASGI app over the same engine, uvicorn, uvloop
and clients (the floor: request parsing, one chunk per token, the socket write).

    python -m bench.stream_path --engine DIR [--streams 32] [--tokens 128] [--repeat 5] [--step-ms 10]

`python -m bench.http_overhead` measures HTTP against the runtime with a real model, where the event
loop's cost shows only as a share of the engine's; here it is the whole of what is measured, steady to a
few microseconds, so a change to the streaming path (chat.py, streams.py, the middlewares, sse.py) shows
its effect at once. The step sleeps (the interpreter lock is free meanwhile, as on a GPU) and then gives
every running request one token; prompts are prepared by the real engine (template, tokenizer).
"""

from __future__ import annotations

import argparse
import statistics
import time

import orjson

from gemma_runtime.api import EngineStats, GenerateRequest, RequestOutput, SamplingParams, Usage


class SleepingStep:
    """An LLMEngine whose step sleeps `step_s` and then emits one token per running request. It prepares
    requests with the real engine it wraps, so the server's side (templates, tokenizer, spec) is real."""

    def __init__(self, real, step_s: float) -> None:
        self.real, self.step_s = real, step_s
        self.spec, self.tokenizer, self.config = real.spec, real.tokenizer, real.config
        self.generation_defaults, self.max_model_len = real.generation_defaults, real.max_model_len
        self.running: dict[str, list[int]] = {}  # request id -> [max_tokens, produced, prompt tokens]

    def prepare(self, request):
        return self.real.prepare(request)

    def add_request(self, request, prepared=None) -> None:
        prompt_tokens = len(prepared.token_ids) if prepared is not None else 0
        self.running[request.request_id] = [request.sampling.max_tokens, 0, prompt_tokens]

    def abort(self, request_id: str):
        if self.running.pop(request_id, None) is not None:
            return RequestOutput(request_id, (), "", finished=True, finish_reason="abort")
        return None

    def abort_all(self) -> list[str]:
        ids = list(self.running)
        self.running.clear()
        return ids

    def has_unfinished(self) -> bool:
        return bool(self.running)

    def stats(self) -> EngineStats:
        return EngineStats(len(self.running), 0, 1024, 1024)

    def step(self) -> list[RequestOutput]:
        time.sleep(self.step_s)
        outputs = []
        for request_id, state in list(self.running.items()):
            state[1] += 1
            done = state[1] >= state[0]
            usage = Usage(state[2], state[1]) if done else None
            outputs.append(
                RequestOutput(
                    request_id, (1000,), " hi", finished=done, finish_reason="length" if done else None, usage=usage
                )
            )
            if done:
                del self.running[request_id]
        return outputs


def bare_app(engine, prompt_ids: list[int]):
    """The floor: an ASGI app that streams the same engine's outputs as chat chunks, and nothing else."""
    served = [0]

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            return await send({"type": "lifespan.shutdown.complete"})
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        served[0] += 1
        request_id = f"floor-{served[0]}"
        sampling = SamplingParams(max_tokens=orjson.loads(body)["max_tokens"], ignore_eos=True)
        head = {"id": request_id, "object": "chat.completion.chunk", "created": 0, "model": "floor"}
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        n = 0
        async for out in engine.generate(GenerateRequest(request_id, prompt_ids, sampling)):
            n += len(out.token_ids)
            choice = {"index": 0, "delta": {"content": out.text}, "logprobs": None, "finish_reason": None}
            chunk = b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": n, "total_tokens": len(prompt_ids) + n}
        tail = b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\ndata: [DONE]\n\n"
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    return app


def event_loop_us_per_token(app, args) -> list[float]:
    """The uvicorn thread's CPU per streamed token over --repeat runs (clients in their own process)."""
    from bench.http_overhead import cpu_by_group, http_load, thread_cpu_s
    from bench.uvicorn_thread import UvicornThread

    per_token = []
    with UvicornThread(app) as server:
        http_load(server.base_url, args.streams, 8, "separate", "raw")  # warm-up, and the client's imports
        for _ in range(args.repeat):
            before = thread_cpu_s()
            tokens, _seconds, _client = http_load(server.base_url, args.streams, args.tokens, "separate", "raw")
            per_token.append(1e6 * cpu_by_group(before, thread_cpu_s())["event_loop"] / tokens)
    return per_token


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.stream_path")
    p.add_argument("--engine", required=True, help="an engine directory: its tokenizer, template and spec")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--step-ms", type=float, default=10.0, help="what one engine step sleeps")
    args = p.parse_args()

    from gemma_runtime.config import RuntimeConfig
    from gemma_runtime.engine.async_engine import AsyncEngine
    from gemma_runtime.engine.llm_engine import LLMEngine
    from server.app import create_app
    from server.backend import EmbeddedBackend
    from server.settings import ServerSettings

    real = LLMEngine(args.engine, RuntimeConfig(device="cpu", max_num_seqs=args.streams))
    engine = AsyncEngine(SleepingStep(real, args.step_ms / 1e3))
    prompt_ids = real.tokenizer.encode("Hello!", add_special_tokens=False)
    print(f"{args.streams} streams x {args.tokens} tokens, a step of {args.step_ms:g} ms sleep, no model", flush=True)
    figures = {}
    # The bare app first: the server's lifespan shuts the engine down when it ends.
    apps = (
        ("bare ASGI", bare_app(engine, prompt_ids)),
        ("server", create_app(ServerSettings(), EmbeddedBackend(engine))),
    )
    for name, app in apps:
        runs = event_loop_us_per_token(app, args)
        figures[name] = statistics.median(runs)
        print(
            f"{name}: event loop {figures[name]:.1f} us per token (median; runs {', '.join(f'{r:.1f}' for r in runs)})",
            flush=True,
        )
    engine.shutdown()  # a no-op when the server's lifespan did it
    print(f"the server's own path: {figures['server'] - figures['bare ASGI']:.1f} us per token above the floor")


if __name__ == "__main__":
    main()
