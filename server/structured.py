"""OpenAI's structured-output fields -> the runtime's `StructuredOutput` and logit bias.

`response_format` (`json_object`, `json_schema` with its `schema`; strict or not, the schema is always
enforced) and a `tool_choice` of "required" or a named function (or "auto" with a `strict` tool) become
a grammar the runtime enforces token by token (gemma_runtime/grammar). A forced tool choice wins over `response_format`: the reply is
then a call. With thinking on, the grammar starts after the thought channel, so reasoning stays free.
What a grammar cannot enforce is refused by the runtime with a 400 naming the feature.
"""

from __future__ import annotations

import json

from gemma_runtime.grammar.spec import StructuredOutput
from server.errors import bad_request


def response_format_output(response_format, thought: str = "none") -> StructuredOutput | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return StructuredOutput("json_object", "", thought)
    if response_format.type == "json_schema":
        spec = response_format.json_schema
        if spec is None or spec.schema_ is None:
            raise bad_request("response_format json_schema needs `json_schema.schema`", param="response_format")
        return StructuredOutput("json_schema", json.dumps(spec.schema_), thought)
    raise bad_request(
        f"response_format type {response_format.type!r} is not supported (one of 'text', 'json_object', 'json_schema')",
        param="response_format",
    )


def tool_choice_output(req, mode: str) -> StructuredOutput | None:
    """A forced tool choice (after the server's `<|tool_call>call:` prefill) as a grammar of Gemma 4 calls;
    under "auto", when a tool is `strict`, every call the model opens is held (the text stays free)."""
    if not req.add_generation_prompt:
        return None
    if mode == "auto" and not (any(t.function.strict for t in req.tools) and req.response_format is None):
        return None
    if mode not in ("required", "named", "auto"):
        return None
    tools = [
        {"name": t.function.name, "parameters": t.function.parameters, "strict": bool(t.function.strict)}
        for t in req.tools
    ]
    source = {
        "tools": tools,
        "choice": mode,
        "parallel": req.parallel_tool_calls,
        "name": req.tool_choice.function.name if mode == "named" else None,
    }
    return StructuredOutput("tool_calls", json.dumps(source))


def chat_output(req, mode: str, thinking: bool, starts_in_reasoning: bool) -> StructuredOutput | None:
    forced = tool_choice_output(req, mode)
    if forced is not None:
        return forced
    thought = "open" if starts_in_reasoning else ("optional" if thinking else "none")
    return response_format_output(req.response_format, thought)


def logit_bias_pairs(logit_bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI sends token ids as JSON object keys (strings)."""
    pairs = []
    for key, value in (logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise bad_request(f"logit_bias keys must be token ids; got {key!r}", param="logit_bias") from None
        if not -100 <= value <= 100:
            raise bad_request(
                f"logit_bias values must be between -100 and 100; got {value} for token {token}", param="logit_bias"
            )
        pairs.append((token, float(value)))
    return tuple(sorted(pairs))
