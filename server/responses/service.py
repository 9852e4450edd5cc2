"""POST /v1/responses logic: request -> chat request and plan -> runtime streams -> Responses events.

The request becomes a `ChatCompletionRequest` (its input items as chat messages, its tools and
sampling fields under their chat names), so prompt rendering, image fetching, length checks and the
output parser are the chat path's own, on whichever backend serves. The events come from one
generator; the non-streaming handler runs it to its end and answers the final response.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import ValidationError

from server.chat import ChatPlan, ChoiceParser, prepare_chat
from server.context import ServerContext
from server.errors import APIError, bad_request
from server.metrics import RequestTimer
from server.protocol import ChatCompletionRequest
from server.responses.assembler import ResponseAssembler
from server.responses.items import normalize_input, to_chat_messages
from server.responses.protocol import NamedToolChoiceParam, ResponsesRequest
from server.responses.reasoning_tokens import ReasoningTokenCounter
from server.responses.refusals import check_supported
from server.responses.store import ResponseStore
from server.streams import check_error, close_all, merge, start_all

# Chat sampling fields a Responses request may carry as extensions (vLLM accepts the same ones).
_PASSTHROUGH = ("seed", "top_k", "min_p", "stop", "presence_penalty", "frequency_penalty", "ignore_eos")
# Chat parameter names in errors from the chat path -> the Responses field the client sent.
_PARAM_NAMES = {"max_completion_tokens": "max_output_tokens", "messages": "input"}


@dataclass(frozen=True)
class ResponsePlan:
    request: ResponsesRequest
    chat_request: ChatCompletionRequest
    chat: ChatPlan
    input_items: tuple[dict, ...]  # the previous response's conversation, then this request's input
    skeleton: dict  # the response object before any output


def _chat_tools(req: ResponsesRequest) -> dict:
    if not req.tools:
        return {}
    tools = [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters, "strict": t.strict},
        }
        for t in req.tools
    ]
    choice = req.tool_choice
    if isinstance(choice, NamedToolChoiceParam):
        choice = {"type": "function", "function": {"name": choice.name}}
    out = {"tools": tools, "tool_choice": choice}
    if req.parallel_tool_calls is not None:
        out["parallel_tool_calls"] = req.parallel_tool_calls
    return out


def to_chat_request(req: ResponsesRequest, messages: list[dict]) -> ChatCompletionRequest:
    extras = {k: v for k, v in (req.model_extra or {}).items() if k in _PASSTHROUGH}
    body = {
        "messages": messages,
        "max_completion_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "chat_template_kwargs": {**(req.chat_template_kwargs or {}), "enable_thinking": req.thinking},
        **_chat_tools(req),
        **extras,
    }
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.as_response_format() is not None:
        body["response_format"] = fmt.as_response_format()  # enforced by the runtime's grammar (server/structured.py)
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        param = _PARAM_NAMES.get(where.split(".", 1)[0], where) if where else None
        raise bad_request(
            f"Invalid request: {where or 'input'}: {first.get('msg', 'invalid')}"[:300], param=param
        ) from None


def _tool_json(tool) -> dict:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": tool.strict if tool.strict is not None else True,
    }


def skeleton(req: ResponsesRequest, model: str) -> dict:
    """The response object as `response.created` shows it; the assembler fills output, status and usage."""
    choice = req.tool_choice if req.tool_choice is not None else "auto"
    return {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": dict(req.metadata or {}),
        "model": model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
        "store": req.stores,
        "temperature": req.temperature,
        "text": {
            "format": req.text.format.as_json()
            if req.text is not None and req.text.format is not None
            else {"type": "text"}
        },
        "tool_choice": choice.model_dump(exclude_none=True) if isinstance(choice, NamedToolChoiceParam) else choice,
        "tools": [_tool_json(t) for t in req.tools or ()],
        "top_p": req.top_p,
        "truncation": req.truncation or "disabled",
        "usage": None,
        "user": req.user,
        "completed_at": None,
    }


async def prepare_response(ctx: ServerContext, req: ResponsesRequest, store: ResponseStore) -> ResponsePlan:
    check_supported(req)
    history: tuple[dict, ...] = ()
    if req.previous_response_id is not None:
        entry = store.get(req.previous_response_id)
        if entry is None:
            raise APIError(
                f"Previous response with id '{req.previous_response_id}' not found (never stored, deleted, "
                "or expired).",
                404,
                param="previous_response_id",
                code="previous_response_not_found",
            )
        history = entry.conversation
    items = (*history, *normalize_input(req.input))
    messages = to_chat_messages(list(items), req.instructions, first_index=-len(history))
    chat_request = to_chat_request(req, messages)
    try:
        chat = await prepare_chat(ctx, chat_request)
    except APIError as e:
        head = (e.param or "").split(".", 1)[0]
        e.param = _PARAM_NAMES.get(head, e.param)
        raise
    return ResponsePlan(req, chat_request, chat, items, skeleton(req, req.model or ctx.model_name))


def usage_json(prompt_tokens: int, output_tokens: int, reasoning_tokens: int) -> dict:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": prompt_tokens + output_tokens,
    }


async def response_events(ctx: ServerContext, plan: ResponsePlan, streams, store: ResponseStore) -> AsyncIterator[dict]:
    """The whole response as events; the final one carries the response, which is then stored (when
    asked). A failure after the stream began becomes `response.failed` rather than a broken stream."""
    assembler = ResponseAssembler(plan.skeleton)
    parser = ChoiceParser(plan.chat, plan.chat_request)
    reasoning = ReasoningTokenCounter(ctx.backend.tokenizer, plan.chat.starts_in_reasoning)
    timer = RequestTimer(ctx.metrics)
    prompt_tokens, output_tokens, length_cut = len(plan.chat.prompt_ids), 0, False
    merged = merge(streams)
    try:
        for event in assembler.start() + assembler.feed(parser.prefill_delta):
            yield event
        async for _, out in merged:
            check_error(out)
            timer.output(len(out.token_ids))
            reasoning.add(out.token_ids)
            events = assembler.feed(parser.feed(out.text))
            if out.finished:
                events += assembler.feed(parser.finish())
                if out.usage is not None:
                    prompt_tokens, output_tokens = out.usage.prompt_tokens, out.usage.completion_tokens
                length_cut = out.finish_reason == "length"
                timer.done(prompt_tokens)
            for event in events:
                yield event
        usage = usage_json(prompt_tokens, output_tokens, reasoning.count)
        final = assembler.finish(incomplete_reason="max_output_tokens" if length_cut else None, usage=usage)
    except APIError as e:
        final = assembler.fail(e.code or "server_error", e.message)
    except Exception as e:  # noqa: BLE001 - the stream's status line is already sent; report in-band
        final = assembler.fail("server_error", f"Internal server error: {type(e).__name__}: {e}")
    finally:
        await close_all(merged, streams)
    if plan.request.stores:
        store.put(assembler.response, list(plan.input_items))
    for event in final:
        yield event


async def run_to_end(ctx: ServerContext, plan: ResponsePlan, store: ResponseStore) -> dict:
    """The non-streaming response: the same events, run to their end; a failure is an error envelope."""
    streams = await start_all(ctx.backend, plan.chat.runtime_requests())
    events, last = response_events(ctx, plan, streams, store), None
    try:
        async for event in events:
            last = event
    finally:
        await events.aclose()  # cancelled (the client left): abort the runtime request at once
    response = last["response"]
    if response["status"] == "failed":
        raise APIError(response["error"]["message"], 500, code=response["error"]["code"])
    return response
