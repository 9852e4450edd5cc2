"""Request models of the OpenAI API (pydantic). Unknown fields are accepted: clients send many.

Responses are built as plain dicts (server/chat.py, server/completions.py): they are write-only and
hot in streaming, where a pydantic round trip per chunk costs more than it gives.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.raw_checks import reject_bool_numbers, reject_lone_surrogates


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Model):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class ImageURL(_Model):
    url: str
    detail: str | None = None


class ContentPart(_Model):
    type: Literal["text", "image_url", "input_text", "image"]
    text: str | None = None
    image_url: ImageURL | str | None = None

    @model_validator(mode="after")
    def _check(self) -> ContentPart:
        if self.type in ("text", "input_text") and self.text is None:
            raise ValueError("a text content part needs `text`")
        if self.type in ("image_url", "image") and self.image_url is None:
            raise ValueError("an image_url content part needs `image_url.url`")
        return self

    @property
    def url(self) -> str | None:
        if isinstance(self.image_url, str):
            return self.image_url
        return self.image_url.url if self.image_url else None


class FunctionCall(_Model):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Model):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None  # the older name of `reasoning`; accepted on input


class FunctionDefinition(_Model):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Model):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Model):
    name: str


class NamedToolChoice(_Model):
    type: Literal["function"] = "function"
    function: NamedFunction


class JSONSchemaFormat(_Model):
    name: str | None = None
    description: str | None = None
    # `schema` shadows a BaseModel attribute, hence the alias
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class _SamplingFields(_Model):
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=16)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> -100..100 (server/structured.py)
    response_format: ResponseFormat | None = None
    user: str | None = None

    # Numeric fields where a JSON boolean is a client mistake (pydantic would coerce true to 1).
    _numeric_fields: ClassVar[tuple[str, ...]] = (
        "n",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "min_tokens",
        "max_tokens",
        "max_completion_tokens",
        "top_logprobs",
        "best_of",
    )

    @model_validator(mode="before")
    @classmethod
    def _check_raw(cls, data):
        reject_bool_numbers(data, cls._numeric_fields)
        reject_lone_surrogates(data)
        return data

    @model_validator(mode="after")
    def _check_common(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if (
            self.response_format is not None
            and self.response_format.type == "json_schema"
            and (self.response_format.json_schema is None or self.response_format.json_schema.schema_ is None)
        ):
            raise ValueError("response_format json_schema needs `json_schema.schema`")
        return self

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(s for s in self.stop if s)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    include_reasoning: bool = True
    reasoning_effort: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    skip_special_tokens: bool = False

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs to be true")
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            if self.tool_choice != "auto":
                raise ValueError("tool_choice 'required' or a named function needs `tools`")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or ()}
            if self.tool_choice.function.name not in names:
                raise ValueError(
                    f"tool_choice names function {self.tool_choice.function.name!r}, which is not in `tools`"
                )
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def template_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.chat_template_kwargs or {})
        # Gemma 4's template only knows enable_thinking: map the OpenAI knob onto it as vLLM does.
        if "enable_thinking" not in kwargs and self.reasoning_effort is not None:
            kwargs["enable_thinking"] = self.reasoning_effort != "none"
        kwargs["enable_thinking"] = bool(kwargs.get("enable_thinking", False))
        return kwargs


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    skip_special_tokens: bool = True

    _numeric_fields: ClassVar[tuple[str, ...]] = (*_SamplingFields._numeric_fields, "logprobs")

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported")
        if isinstance(self.prompt, list) and len(self.prompt) == 0:
            raise ValueError("prompt must not be empty")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompt as a batch: a string, a token list, or a list of either."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)
