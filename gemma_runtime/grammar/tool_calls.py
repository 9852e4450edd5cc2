"""Gemma 4's tool-call syntax as a grammar, derived from the tools' parameter schemas.

A call is `call:NAME{key:value,...}<tool_call|>` after `<|tool_call>`; values are bare numbers,
`true`/`false`/`null`, `<|"|>`-delimited strings (no escapes), `[...]` and `{...}` with bare keys
(gemma4.md section 4.2). The OpenAI server prefills the start of the call (`<|tool_call>call:` for
`tool_choice: "required"`, `<|tool_call>call:NAME{` for a named function), so the grammar picks up
right after the prefill and ends at the model's stop token. The source (JSON) is
`{"tools": [{"name", "parameters", "strict"}], "choice": "required" | "named" | "auto", "name": ..., "parallel": bool}`.

Under "auto" the model writes freely until it opens `<|tool_call>`; from there (an xgrammar triggered
structural tag) the call must name a declared tool, and a `strict` tool's arguments follow its schema
(other tools' arguments are any Gemma 4 object), until `<tool_call|>` frees the text again.

The JSON-schema subset handled here is narrower than for `response_format` (see `value_rules.py`);
everything else is refused by name, so a tool's promise is never silently weakened.
"""

from __future__ import annotations

from gemma_runtime.grammar.value_rules import CALL_CLOSE, CALL_OPEN, RuleWriter, literal

CALL_OPEN_TEXT, CALL_CLOSE_TEXT = "<|tool_call>", "<tool_call|>"


def tool_call_structural_tag(source: dict) -> dict:
    """tool_choice "auto" with strict tools: free text, and every call the model opens is held."""
    tags = []
    for tool in source["tools"]:
        w = RuleWriter()
        schema = (tool.get("parameters") or {"type": "object"}) if tool.get("strict") else True
        w.add("root", w.value(schema, f"{tool['name']}.parameters", object_only=True))
        tags.append(
            {
                "type": "tag",
                "begin": f"{CALL_OPEN_TEXT}call:{tool['name']}",
                "content": {"type": "grammar", "grammar": w.text()},
                "end": CALL_CLOSE_TEXT,
            }
        )
    return {
        "type": "structural_tag",
        "format": {
            "type": "triggered_tags",
            "triggers": [CALL_OPEN_TEXT],
            "tags": tags,
            "stop_after_first": not source.get("parallel", True),
        },
    }


def tool_call_grammar(source: dict) -> str:
    """The EBNF grammar (xgrammar's dialect, root rule `root`) for what follows the prefill."""
    tools = {t["name"]: t.get("parameters") or {"type": "object"} for t in source["tools"]}
    w = RuleWriter()
    if source["choice"] == "named":
        name = source["name"]
        inner = w.object_inner(tools[name], f"{name}.parameters")
        w.add("root", f'{inner} "}}" {CALL_CLOSE}')
        return w.text()
    calls = " | ".join(
        f"{literal(name)} {w.value(schema, f'{name}.parameters', object_only=True)}" for name, schema in tools.items()
    )
    w.add("call", f"( {calls} ) {CALL_CLOSE}")
    more = f' ( {CALL_OPEN} "call:" call )*' if source.get("parallel", True) else ""
    w.add("root", f"call{more}")
    return w.text()
