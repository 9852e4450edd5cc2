"""The contract between the runtime and its callers (the OpenAI server and the Triton backend).

Plain dataclasses only: a caller builds a `GenerateRequest`, hands it to `AsyncEngine.generate`, and
reads a stream of `RequestOutput`s, the last of which has `finished=True`, a `finish_reason` and usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gemma_runtime.grammar.spec import StructuredOutput

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings. Defaults are greedy with no limits beyond max_tokens."""

    max_tokens: int = 16
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or less means off
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()  # extra stop ids beside the engine's generation-config stops
    ignore_eos: bool = False  # when set, only max_tokens ends the request
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # None: off; k >= 0: sampled token's logprob plus the top k
    skip_special_tokens: bool = False  # the server parses <|channel>, <|tool_call>...: keep them by default
    min_tokens: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), OpenAI's -100..100, added to the logits
    structured: StructuredOutput | None = None  # constrained decoding: JSON schema, JSON object, tool calls

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be non-negative")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError("min_p must be in [0, 1]")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError("logprobs must be between 0 and 20")
        if any(not -100 <= b <= 100 for _, b in self.logit_bias):
            raise ValueError("logit_bias values must be between -100 and 100")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True)
class GenerateRequest:
    """One generation. `prompt` is text (tokenized without adding <bos>: the chat template emits it)
    or token ids. Each image is encoded bytes (PNG, JPEG, GIF) or a PIL image; the prompt must hold one
    image placeholder token (`<|image|>`) per image, which the runtime expands to the soft tokens."""

    request_id: str
    prompt: str | list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    images: tuple = ()
    image_max_soft_tokens: int | None = None  # one of 70, 140, 280, 560, 1120; None: engine default


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token_id, logprob), most likely first


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class RequestOutput:
    """One streamed step of one request: the tokens produced since the previous output."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str  # text delta for token_ids (stop strings and stop tokens removed)
    logprobs: tuple[TokenLogprob, ...] | None = None
    finished: bool = False
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None  # the stop token id or stop string that ended the request
    usage: Usage | None = None  # set on the final output
    error: str | None = None  # set when finish_reason == "error"


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_blocks_total: int
    kv_blocks_free: int  # cached pages no sequence holds count as free: they are evicted on demand
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of which found
    # speculative decoding (gemma_runtime/speculative/metrics.py): drafts verified, of which kept; the
    # sequence-steps that verified drafts and the tokens they emitted (mean accepted length = emitted / verifies)
    spec_decode_drafted: int = 0
    spec_decode_accepted: int = 0
    spec_decode_verifies: int = 0
    spec_decode_emitted: int = 0

    @property
    def kv_usage(self) -> float:
        if self.kv_blocks_total == 0:
            return 0.0
        return 1.0 - self.kv_blocks_free / self.kv_blocks_total


class RequestError(ValueError):
    """A request the engine cannot take (too long, bad image...). Maps to HTTP 400."""
