"""POST /v1/chat/completions logic: request -> runtime requests -> OpenAI response or SSE chunks.

The model's raw text (special tokens kept) goes through one Gemma4OutputParser per choice; the
non-streaming path feeds the whole text at once, so both paths produce the same message.

tool_choice "required" / a named function are honoured by prefilling the generation with
`<|tool_call>call:` / `<|tool_call>call:NAME{`, and the rest of the call is held to a grammar derived
from the tools' parameter schemas (server/structured.py): whatever the model, the reply is a call to
a declared tool with arguments that validate. The prefill is fed to the parser before the model's text.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gemma_runtime.api import GenerateRequest, SamplingParams
from server.chat_template import render_prompt
from server.context import ServerContext
from server.errors import APIError, bad_request, sse_error_event
from server.images import ImageError, load_image
from server.logprobs import chat_logprobs
from server.metrics import RequestTimer
from server.parsers.output_parser import Gemma4OutputParser, ParsedDelta, ToolCallDelta
from server.parsers.reasoning import CHANNEL_CLOSE, CHANNEL_OPEN
from server.parsers.tool_calls import TOOL_CALL_OPEN
from server.prompt_work import offload
from server.protocol import ChatCompletionRequest, NamedToolChoice
from server.sampling import resolve_max_tokens, sampling_params
from server.served_names import echoed_model
from server.sse_json import sse_event
from server.streams import check_error, close_all, collect_choices, merge
from server.structured import chat_output

TOOL_CALL_PREFIX = TOOL_CALL_OPEN + "call:"  # the form the model is trained on


@dataclass(frozen=True)
class ChatPlan:
    request_id: str
    created: int
    prompt_ids: list[int]
    images: tuple[bytes, ...]
    prefill: str  # text the generation starts with (tool_choice forcing), fed to the parser first
    tool_mode: str  # "none" | "auto" | "required" | "named"
    starts_in_reasoning: bool
    sampling: tuple[SamplingParams, ...]  # one per choice

    def runtime_requests(self) -> list[GenerateRequest]:
        return [
            GenerateRequest(request_id=f"{self.request_id}-{i}", prompt=self.prompt_ids, sampling=s, images=self.images)
            for i, s in enumerate(self.sampling)
        ]


def tool_mode(req: ChatCompletionRequest) -> str:
    if not req.tools or req.tool_choice == "none":
        return "none"
    if isinstance(req.tool_choice, NamedToolChoice):
        return "named"
    return "required" if req.tool_choice == "required" else "auto"


def tool_prefill(req: ChatCompletionRequest, mode: str) -> str:
    if not req.add_generation_prompt:
        return ""  # continuing the client's own final message: never put words in it
    if mode == "required":
        return TOOL_CALL_PREFIX
    if mode == "named":
        return TOOL_CALL_PREFIX + req.tool_choice.function.name + "{"
    return ""


def _open_channel_at_end(prompt: str) -> bool:
    """Does the prompt leave the thought channel open (the model continues inside its reasoning)?"""
    turn = prompt.rsplit("<|turn>", 1)[-1]
    return turn.rfind(CHANNEL_OPEN) > turn.rfind(CHANNEL_CLOSE)


async def load_images(ctx: ServerContext, urls: tuple[str, ...]) -> tuple[bytes, ...]:
    if not urls:
        return ()
    limit = ctx.settings.max_images_per_prompt
    if len(urls) > limit:
        raise bad_request(
            f"At most {limit} image(s) may be provided in one prompt; this request has {len(urls)}.",
            param="messages",
            code="too_many_images",
        )
    if ctx.backend.spec.vision is None:
        raise bad_request("This model does not accept images (its engine has no vision encoder).", param="messages")
    try:
        # A TaskGroup: the first image that fails cancels the other fetches instead of letting them run on.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(load_image(u, ctx.image_policy)) for u in urls]
    except* ImageError as errors:
        e = errors.exceptions[0]
        raise APIError(e.message, e.status_code, param="messages", code=e.code) from None
    return tuple(t.result() for t in tasks)


async def prepare_chat(ctx: ServerContext, req: ChatCompletionRequest) -> ChatPlan:
    if ctx.guard is not None:
        ctx.guard.check_chat(req)  # caps and the size bound, before any rendering (server/limits.py)
    tokenizer = ctx.backend.tokenizer
    rendered = await offload(ctx.workers, render_prompt, tokenizer, req)
    mode = tool_mode(req)
    prefill = tool_prefill(req, mode)
    prompt_text = rendered.text + prefill
    images = await load_images(ctx, rendered.image_urls)
    prompt_ids = await offload(
        ctx.workers, tokenizer.encode, prompt_text, add_special_tokens=False
    )  # the template emits <bos>
    prompt_len = len(prompt_ids) + len(images) * ctx.limits.image_tokens
    max_tokens = resolve_max_tokens(req.max_new_tokens, prompt_len, ctx.limits, "max_completion_tokens")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    starts_in_reasoning = _open_channel_at_end(prompt_text)
    structured = chat_output(req, mode, req.template_kwargs["enable_thinking"], starts_in_reasoning)
    sampling = tuple(
        sampling_params(
            req,
            ctx.backend.generation_defaults,
            max_tokens=max_tokens,
            seed_offset=i,
            logprobs=logprobs,
            skip_special_tokens=req.skip_special_tokens,
            structured=structured,
        )
        for i in range(req.n)
    )
    return ChatPlan(
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        prompt_ids=prompt_ids,
        images=images,
        prefill=prefill,
        tool_mode=mode,
        starts_in_reasoning=starts_in_reasoning,
        sampling=sampling,
    )


def finish_reason(engine_reason: str | None, has_calls: bool, mode: str) -> str:
    if engine_reason == "length":
        return "length"  # kept even mid tool call, so a client can tell a truncated call
    if has_calls and mode in ("auto", "required"):
        return "tool_calls"
    return "stop"  # OpenAI answers `stop` for a forced named function


class ChoiceParser:
    """One choice's parser plus the request-level filters (parallel_tool_calls, include_reasoning)."""

    def __init__(self, plan: ChatPlan, req: ChatCompletionRequest) -> None:
        self.parser = Gemma4OutputParser(
            parse_tool_calls=plan.tool_mode != "none", starts_in_reasoning=plan.starts_in_reasoning
        )
        self.single_call = not req.parallel_tool_calls
        self.has_calls = False
        self.prefill_delta = self.parser.feed(plan.prefill) if plan.prefill else ParsedDelta()

    def _filter(self, delta: ParsedDelta) -> ParsedDelta:
        calls: tuple[ToolCallDelta, ...] = delta.tool_calls
        if self.single_call:
            calls = tuple(c for c in calls if c.index == 0)  # parallel_tool_calls=false keeps the first call
        self.has_calls = self.has_calls or bool(calls)
        return ParsedDelta(delta.reasoning, delta.content, calls)

    def feed(self, text: str) -> ParsedDelta:
        return self._filter(self.parser.feed(text)) if text else ParsedDelta()

    def finish(self) -> ParsedDelta:
        return self._filter(self.parser.finish())


def _tool_call_json(c) -> dict:
    return {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}


def _add_reasoning(target: dict, reasoning: str | None, req: ChatCompletionRequest, alias: bool) -> None:
    if not req.include_reasoning:
        return
    target["reasoning"] = reasoning
    if alias:
        target["reasoning_content"] = reasoning


def usage_json(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage object; cached_tokens: prompt tokens whose KV came from the prefix cache."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


# -- non-streaming ---------------------------------------------------------------------------------


async def chat_completion(ctx: ServerContext, req: ChatCompletionRequest, plan: ChatPlan) -> dict:
    collected = await collect_choices(ctx.backend, ctx.metrics, plan.runtime_requests())
    choices, prompt_tokens, completion_tokens, cached_tokens = [], len(plan.prompt_ids), 0, 0
    for i, got in enumerate(collected):
        final = got.final
        parser = ChoiceParser(plan, req)
        parsed = [parser.prefill_delta, parser.feed(got.text), parser.finish()]
        reasoning = "".join(d.reasoning for d in parsed) or None
        content = "".join(d.content for d in parsed) or None
        calls = [c for d in parsed for c in d.tool_calls]
        message: dict = {"role": "assistant", "content": content if (content or calls) else ""}
        _add_reasoning(message, reasoning, req, ctx.settings.reasoning_content_alias)
        if calls:
            message["tool_calls"] = [_tool_call_json(c) for c in calls]
        choice = {
            "index": i,
            "message": message,
            "logprobs": chat_logprobs(ctx.token_text, got.logprobs, req.top_logprobs or 0) if req.logprobs else None,
            "finish_reason": finish_reason(final.finish_reason if final else "stop", parser.has_calls, plan.tool_mode),
        }
        choices.append(choice)
        if final is not None and final.usage is not None:
            prompt_tokens = final.usage.prompt_tokens
            completion_tokens += final.usage.completion_tokens
            if i == 0:  # the n choices share one prompt: the first one's lookup is the prompt's
                cached_tokens = final.usage.cached_tokens
    return {
        "id": plan.request_id,
        "object": "chat.completion",
        "created": plan.created,
        "model": echoed_model(ctx, req.model),
        "choices": choices,
        "usage": usage_json(prompt_tokens, completion_tokens, cached_tokens),
    }


# -- streaming -------------------------------------------------------------------------------------


class ChunkWriter:
    """Serializes chat.completion.chunk events; every chunk carries the same id and created."""

    def __init__(self, plan: ChatPlan, model: str) -> None:
        self._head = {"id": plan.request_id, "object": "chat.completion.chunk", "created": plan.created, "model": model}

    def choice(self, index: int, delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> str:
        return sse_event(
            {
                **self._head,
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
            }
        )

    def usage(self, usage: dict) -> str:
        return sse_event({**self._head, "choices": [], "usage": usage})


def delta_json(delta: ParsedDelta, req: ChatCompletionRequest, alias: bool) -> dict:
    out: dict = {}
    if delta.reasoning and req.include_reasoning:
        _add_reasoning(out, delta.reasoning, req, alias)
    if delta.content:
        out["content"] = delta.content
    if delta.tool_calls:
        out["tool_calls"] = [
            {"index": c.index, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            if c.id is not None
            else {"index": c.index, "function": {"arguments": c.arguments}}
            for c in delta.tool_calls
        ]
    return out


def split_call_headers(delta: dict) -> list[dict]:
    """A call's first appearance becomes two chunks, as OpenAI streams them: the header (index, id, type,
    name, empty arguments), then the arguments as a fragment. The parser commits a call only once it is
    complete (a call that turns out malformed stays text), so its arguments arrive as one fragment."""
    calls = delta.get("tool_calls")
    if not calls or not any("id" in c and c["function"]["arguments"] for c in calls):
        return [delta] if delta else []
    headers = [{**c, "function": {**c["function"], "arguments": ""}} if "id" in c else c for c in calls]
    fragments = [
        {"index": c["index"], "function": {"arguments": c["function"]["arguments"]}}
        for c in calls
        if "id" in c and c["function"]["arguments"]
    ]
    return [{**delta, "tool_calls": headers}, {"tool_calls": fragments}]


DONE = "data: [DONE]\n\n"


def from_deltas(writer: ChunkWriter, index: int, delta: dict, logprobs: dict | None) -> str:
    """The SSE events for one parsed delta (two when it opens a tool call); logprobs ride on the first."""
    parts = split_call_headers(delta) or [{}]
    return "".join(writer.choice(index, part, logprobs=logprobs if k == 0 else None) for k, part in enumerate(parts))


async def chat_stream(ctx: ServerContext, req: ChatCompletionRequest, plan: ChatPlan, streams) -> AsyncIterator[str]:
    """SSE events (section (a) of reference/openai_servers.md): per choice a role chunk, then deltas,
    then a finish chunk; the usage chunk when asked; `[DONE]`. A failure after the 200 went out is an
    error event followed by `[DONE]`."""
    writer = ChunkWriter(plan, echoed_model(ctx, req.model))
    alias = ctx.settings.reasoning_content_alias
    parsers = [ChoiceParser(plan, req) for _ in streams]
    timers = [RequestTimer(ctx.metrics) for _ in streams]
    prompt_tokens, completion_tokens, cached_tokens = len(plan.prompt_ids), 0, 0
    merged = merge(streams)
    try:
        for i, p in enumerate(parsers):
            yield writer.choice(i, {"role": "assistant", "content": ""})
            first = delta_json(p.prefill_delta, req, alias)
            if first:
                yield from_deltas(writer, i, first, None)
        async for i, out in merged:
            check_error(out)
            timers[i].output(len(out.token_ids))
            p = parsers[i]
            delta = delta_json(p.feed(out.text), req, alias)
            logprobs = (
                chat_logprobs(ctx.token_text, out.logprobs, req.top_logprobs or 0)
                if req.logprobs and out.logprobs
                else None
            )
            if out.finished:
                tail = split_call_headers(delta_json(p.finish(), req, alias)) or [{}]
                if delta or logprobs:
                    yield from_deltas(writer, i, delta, logprobs)
                for part in tail[:-1]:
                    yield writer.choice(i, part)
                yield writer.choice(
                    i, tail[-1], finish_reason=finish_reason(out.finish_reason, p.has_calls, plan.tool_mode)
                )
                if out.usage is not None:
                    prompt_tokens = out.usage.prompt_tokens
                    completion_tokens += out.usage.completion_tokens
                    if i == 0:
                        cached_tokens = out.usage.cached_tokens
                timers[i].done(prompt_tokens)
            elif delta or logprobs:
                yield from_deltas(writer, i, delta, logprobs)
        if req.include_usage:
            yield writer.usage(usage_json(prompt_tokens, completion_tokens, cached_tokens))
    except APIError as e:
        yield sse_error_event(e)
    except Exception as e:  # noqa: BLE001 - the status line is already sent; report in-band
        yield sse_error_event(APIError(f"Internal server error: {type(e).__name__}: {e}", 500))
    finally:
        await close_all(merged, streams)
    yield DONE
