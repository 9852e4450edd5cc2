"""Request models of `POST /v1/responses` (pydantic). Unknown fields are accepted, as for chat
completions; fields we cannot honour are refused with a 400 in `refusals.py`, not silently dropped.

Input items stay plain dicts here: `items.py` validates each one by its `type` (a registry), so an
error can name the item's position (`input.3.call_id`) rather than a pydantic union's guesses.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionToolParam(_Model):
    """A Responses function tool: flat, unlike chat's `{"type": "function", "function": {...}}`."""

    type: str
    name: str | None = Field(None, min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedToolChoiceParam(_Model):
    type: str
    name: str | None = None


class ReasoningParam(_Model):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class TextFormatParam(_Model):
    """`text`, `json_object`, or `json_schema` with the schema beside the type (the Responses API's flat form)."""

    type: str = "text"
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # `schema` shadows a BaseModel attribute
    strict: bool | None = None

    def as_response_format(self) -> dict | None:
        """The chat request's `response_format` for this format (None for plain text)."""
        if self.type == "json_object":
            return {"type": "json_object"}
        if self.type == "json_schema":
            spec = {"name": self.name, "description": self.description, "schema": self.schema_, "strict": self.strict}
            return {"type": "json_schema", "json_schema": {k: v for k, v in spec.items() if v is not None}}
        return None

    def as_json(self) -> dict:
        return self.model_dump(
            by_alias=True, exclude_none=True, include={"type", "name", "description", "schema_", "strict"}
        )


class TextParam(_Model):
    format: TextFormatParam | None = None
    verbosity: str | None = None


class ResponsesRequest(_Model):
    model: str | None = None
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    tools: list[FunctionToolParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoiceParam | None = None
    parallel_tool_calls: bool | None = None
    reasoning: ReasoningParam | None = None
    text: TextParam | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    stream: bool = False
    background: bool | None = None
    include: list[str] | None = None
    user: str | None = None
    truncation: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # as in chat completions (a vLLM extension)

    @model_validator(mode="after")
    def _check(self) -> ResponsesRequest:
        if self.metadata is not None and len(self.metadata) > 16:
            raise ValueError("metadata may hold at most 16 keys")
        for key, value in (self.metadata or {}).items():
            if len(key) > 64 or len(value) > 512:
                raise ValueError("metadata keys are at most 64 characters and values at most 512")
        return self

    @property
    def stores(self) -> bool:
        return self.store is not False  # the Responses API stores by default

    @property
    def thinking(self) -> bool:
        """Gemma 4 thinks when `reasoning` asks for any effort (as vLLM maps reasoning_effort); the
        chat template's own switch, when given, wins."""
        kwargs = self.chat_template_kwargs or {}
        if "enable_thinking" in kwargs:
            return bool(kwargs["enable_thinking"])
        return self.reasoning is not None and self.reasoning.effort != "none"
