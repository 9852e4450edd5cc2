"""POST /v1/completions: raw prompts (text or token ids, one or a batch) -> text, no chat parsing."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gemma_runtime.api import GenerateRequest, RequestOutput
from server.chat import DONE, usage_json
from server.context import ServerContext
from server.errors import APIError, bad_request, sse_error_event
from server.logprobs import completion_logprobs
from server.metrics import RequestTimer
from server.protocol import CompletionRequest
from server.sampling import resolve_max_tokens, sampling_params
from server.served_names import echoed_model
from server.sse_json import sse_event
from server.streams import check_error, close_all, collect_choices, merge
from server.structured import response_format_output


@dataclass(frozen=True)
class CompletionPlan:
    request_id: str
    created: int
    prompts: tuple[tuple[int, ...], ...]  # token ids per prompt
    prompt_texts: tuple[str, ...]  # for echo
    requests: tuple[GenerateRequest, ...]  # prompt-major: choice index = prompt_index * n + j


def prepare_completion(ctx: ServerContext, req: CompletionRequest) -> CompletionPlan:
    tokenizer = ctx.backend.tokenizer
    vocab = ctx.backend.spec.text.vocab_size
    request_id = f"cmpl-{uuid.uuid4().hex}"
    prompts, texts, requests = [], [], []
    structured = response_format_output(req.response_format)
    for p_index, prompt in enumerate(req.prompts):
        if isinstance(prompt, str):
            ids = tokenizer.encode(prompt, add_special_tokens=False)
            text = prompt
        else:
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise bad_request(f"prompt token ids must be in [0, {vocab}); got {bad[0]}", param="prompt")
            ids = list(prompt)
            text = tokenizer.decode(ids, skip_special_tokens=False) if req.echo else ""
        if not ids:
            raise bad_request("the prompt is empty", param="prompt")
        max_tokens = resolve_max_tokens(req.max_tokens, len(ids), ctx.limits, "max_tokens")
        for j in range(req.n):
            sampling = sampling_params(
                req,
                ctx.backend.generation_defaults,
                max_tokens=max_tokens,
                seed_offset=j,
                logprobs=req.logprobs,
                skip_special_tokens=req.skip_special_tokens,
                structured=structured,
            )
            requests.append(
                GenerateRequest(request_id=f"{request_id}-{p_index * req.n + j}", prompt=ids, sampling=sampling)
            )
        prompts.append(tuple(ids))
        texts.append(text)
    return CompletionPlan(request_id, int(time.time()), tuple(prompts), tuple(texts), tuple(requests))


def _finish(out: RequestOutput) -> str:
    return "length" if out.finish_reason == "length" else "stop"


def _prompt_tokens(plan: CompletionPlan) -> int:
    return sum(len(p) for p in plan.prompts)


async def completion(ctx: ServerContext, req: CompletionRequest, plan: CompletionPlan) -> dict:
    collected = await collect_choices(ctx.backend, ctx.metrics, list(plan.requests))
    choices, completion_tokens, cached_tokens = [], 0, 0
    for i, got in enumerate(collected):
        final = got.final
        echo = plan.prompt_texts[i // req.n] if req.echo else ""
        text = echo + got.text
        choices.append(
            {
                "index": i,
                "text": text,
                "logprobs": completion_logprobs(ctx.token_text, got.logprobs, req.logprobs, offset=len(echo))
                if req.logprobs is not None
                else None,
                "finish_reason": _finish(final) if final else "stop",
            }
        )
        if final is not None and final.usage is not None:
            completion_tokens += final.usage.completion_tokens
            cached_tokens += final.usage.cached_tokens if i % req.n == 0 else 0  # one lookup per prompt
    return {
        "id": plan.request_id,
        "object": "text_completion",
        "created": plan.created,
        "model": echoed_model(ctx, req.model),
        "choices": choices,
        "usage": usage_json(_prompt_tokens(plan), completion_tokens, cached_tokens),
    }


async def completion_stream(
    ctx: ServerContext, req: CompletionRequest, plan: CompletionPlan, streams
) -> AsyncIterator[str]:
    head = {
        "id": plan.request_id,
        "object": "text_completion",
        "created": plan.created,
        "model": echoed_model(ctx, req.model),
    }

    def event(index: int, text: str, finish: str | None, logprobs: dict | None = None) -> str:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return sse_event({**head, "choices": [choice]})

    timers = [RequestTimer(ctx.metrics) for _ in streams]
    offsets = [0] * len(streams)
    completion_tokens, cached_tokens = 0, 0
    merged = merge(streams)
    try:
        if req.echo:
            for i in range(len(streams)):
                offsets[i] = len(plan.prompt_texts[i // req.n])
                yield event(i, plan.prompt_texts[i // req.n], None)
        async for i, out in merged:
            check_error(out)
            timers[i].output(len(out.token_ids))
            logprobs = None
            if req.logprobs is not None and out.logprobs:
                logprobs = completion_logprobs(ctx.token_text, out.logprobs, req.logprobs, offset=offsets[i])
            offsets[i] += len(out.text)
            if out.text or logprobs or out.finished:
                yield event(i, out.text, _finish(out) if out.finished else None, logprobs)
            if out.finished:
                timers[i].done(out.usage.prompt_tokens if out.usage else 0)
                completion_tokens += out.usage.completion_tokens if out.usage else 0
                cached_tokens += out.usage.cached_tokens if out.usage and i % req.n == 0 else 0
        if req.include_usage:
            yield sse_event(
                {**head, "choices": [], "usage": usage_json(_prompt_tokens(plan), completion_tokens, cached_tokens)}
            )
    except APIError as e:
        yield sse_error_event(e)
    except Exception as e:  # noqa: BLE001
        yield sse_error_event(APIError(f"Internal server error: {type(e).__name__}: {e}", 500))
    finally:
        await close_all(merged, streams)
    yield DONE
