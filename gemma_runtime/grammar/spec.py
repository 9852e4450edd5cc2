"""What a request asks its output to follow: a plain, frozen description that travels unchanged from the
OpenAI server (or the Triton translator) to the engine, which compiles it (`compiler.py`).

`kind` names an entry of the compiler's registry: `json_schema` (the source is a JSON schema),
`json_object` (any JSON object; the source is ignored), `tool_calls` (the source is the JSON of a
`ToolCallGrammar`: Gemma 4 call syntax derived from the tools' parameter schemas).

`thought` says where the grammar starts. "none": at the first generated token. "optional": the model may
first open its thought channel (`<|channel>`); the grammar then waits for `<channel|>`, so reasoning
stays free text. "open": the prompt left the channel open; the grammar starts after `<channel|>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ThoughtMode = Literal["none", "optional", "open"]
THOUGHT_MODES = ("none", "optional", "open")


@dataclass(frozen=True)
class StructuredOutput:
    kind: str
    source: str = ""
    thought: ThoughtMode = "none"

    def __post_init__(self) -> None:
        if self.thought not in THOUGHT_MODES:
            raise ValueError(f"thought must be one of {THOUGHT_MODES}, not {self.thought!r}")
