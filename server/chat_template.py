"""Chat messages -> prompt text: the NIM's role rules, then the engine's chat template.

Gemma 4 template pitfalls handled here (reference/gemma4.md section 4): tool-call `arguments` arrive
as JSON strings and must be objects before templating (the template would paste the string raw);
tool-message content must be a string or text parts; OpenAI `image_url` parts become the template's
`{"type": "image"}` (it emits one `<|image|>` each, which the runtime expands).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from server.errors import bad_request
from server.protocol import ChatCompletionRequest, ChatMessage

SYSTEM_ROLES = ("system", "developer")


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    image_urls: tuple[str, ...]


def validate_roles(messages: list[ChatMessage], continue_final_message: bool = False) -> None:
    """Strict user/assistant alternation after an optional system message; tool messages answer the
    assistant message whose calls precede them; the last message is user (or tool results), or
    assistant when continuing it."""
    start = 1 if messages[0].role in SYSTEM_ROLES else 0
    for i, m in enumerate(messages[start:], start):
        if m.role in SYSTEM_ROLES:
            raise bad_request(
                f"messages[{i}]: a {m.role} message is only allowed as the first message", param=f"messages.{i}.role"
            )
    if start >= len(messages):
        raise bad_request("messages must contain a user message after the system message", param="messages")
    if messages[start].role != "user":
        raise bad_request(
            f"the first message (after an optional system message) must have role 'user', not {messages[start].role!r}",
            param=f"messages.{start}.role",
        )
    prev: ChatMessage | None = None
    call_ids: set[str] = set()  # ids of the calls the pending tool messages may answer
    for i, m in enumerate(messages[start:], start):
        where = f"messages.{i}.role"
        if m.role == "user" and prev is not None and prev.role == "user":
            raise bad_request(
                f"messages[{i}]: roles must alternate between user and assistant (two user messages in a row)",
                param=where,
            )
        if m.role == "assistant":
            if prev is None or prev.role == "assistant":
                raise bad_request(
                    f"messages[{i}]: roles must alternate between user and assistant (two assistant messages in a row)",
                    param=where,
                )
            call_ids = {tc.id for tc in m.tool_calls or () if tc.id}
        if m.role == "tool":
            if prev is None or not ((prev.role == "assistant" and prev.tool_calls) or prev.role == "tool"):
                raise bad_request(
                    f"messages[{i}]: a tool message must follow an assistant message with tool_calls", param=where
                )
            if m.tool_call_id is not None and call_ids and m.tool_call_id not in call_ids:
                raise bad_request(
                    f"messages[{i}]: tool_call_id {m.tool_call_id!r} matches no call of the preceding assistant message",
                    param=f"messages.{i}.tool_call_id",
                )
        prev = m
    last = messages[-1]
    if continue_final_message:
        if last.role != "assistant":
            raise bad_request(
                "continue_final_message needs the last message to have role 'assistant'", param="messages"
            )
    elif last.role not in ("user", "tool"):
        raise bad_request(
            f"the last message must have role 'user', not {last.role!r} "
            "(to continue a final assistant message, set add_generation_prompt=false and continue_final_message=true)",
            param=f"messages.{len(messages) - 1}.role",
        )


def _parse_arguments(arguments, where: str) -> dict:
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or arguments.strip() == "":
        return {}
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as e:
        raise bad_request(f"{where} is not valid JSON: {e.msg}", param=where)
    if not isinstance(value, dict):
        raise bad_request(f"{where} must be a JSON object", param=where)
    return value


def _tool_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text or "" for p in content if p.type in ("text", "input_text"))


def to_template_messages(messages: list[ChatMessage]) -> tuple[list[dict], list[str]]:
    """Pydantic messages -> the dicts the template reads, and the image URLs in prompt order."""
    out: list[dict] = []
    images: list[str] = []
    for i, m in enumerate(messages):
        msg: dict = {"role": m.role}
        if m.role == "tool":
            msg["content"] = _tool_text(m.content)
            if m.tool_call_id is not None:
                msg["tool_call_id"] = m.tool_call_id
            if m.name is not None:
                msg["name"] = m.name
            out.append(msg)
            continue
        if isinstance(m.content, list):
            parts = []
            for p in m.content:
                if p.type in ("text", "input_text"):
                    parts.append({"type": "text", "text": p.text})
                else:
                    if m.role != "user":
                        raise bad_request(
                            f"messages[{i}]: images are only allowed in user messages", param=f"messages.{i}.content"
                        )
                    images.append(p.url)
                    parts.append({"type": "image"})
            msg["content"] = parts
        else:
            msg["content"] = m.content if m.content is not None else ""
        if m.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": tc.id,
                    "type": "function",
                    "function": {
                        "name": tc.function.name,
                        "arguments": _parse_arguments(
                            tc.function.arguments, f"messages.{i}.tool_calls.{j}.function.arguments"
                        ),
                    },
                }
                for j, tc in enumerate(m.tool_calls)
            ]
        reasoning = m.reasoning if m.reasoning is not None else m.reasoning_content
        if reasoning:
            msg["reasoning"] = reasoning
        out.append(msg)
    return out, images


def template_tools(req: ChatCompletionRequest) -> list[dict] | None:
    """The tools the model is told about. tool_choice 'none' hides them (the NIM's advice: omit tools)."""
    if not req.tools or req.tool_choice == "none":
        return None
    tools = []
    for t in req.tools:
        fn = {"name": t.function.name, "description": t.function.description or ""}
        if t.function.parameters:
            fn["parameters"] = t.function.parameters
        tools.append({"type": "function", "function": fn})
    return tools


def render_prompt(tokenizer, req: ChatCompletionRequest) -> RenderedPrompt:
    validate_roles(req.messages, req.continue_final_message)
    messages, images = to_template_messages(req.messages)
    try:
        text = tokenizer.apply_chat_template(
            messages,
            tools=template_tools(req),
            tokenize=False,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            **req.template_kwargs,
        )
    except (ValueError, TypeError, KeyError) as e:
        raise bad_request(f"the chat template could not render these messages: {e}", param="messages")
    except Exception as e:  # jinja2 TemplateError and friends: a client problem, not a server crash
        raise bad_request(
            f"the chat template could not render these messages: {type(e).__name__}: {e}", param="messages"
        )
    return RenderedPrompt(text=text, image_urls=tuple(images))
