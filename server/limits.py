"""Per-request caps and the cheap size bound, checked before any rendering or tokenizing.

A request's work must be bounded before it is admitted: rendering a 30 MB prompt through Jinja and the
tokenizer took minutes under the GIL before its length was even known. `RequestGuard` is built once
at startup and refuses, with a 400 that names the limit (and its flag, see docs/operations.md):
- prompts whose characters alone prove them longer than max_model_len (no token covers more than the
  vocabulary's longest piece, so chars / longest piece is a lower bound on the token count);
- stop strings beyond `--max-stop-strings` / `--max-stop-string-length` (matched on the engine thread
  for every token of every choice);
- prompts x n beyond `--max-sequences-per-request`, tools beyond `--max-tools` / `--max-tools-bytes`,
  logprobs beyond `--max-logprobs`;
- seeds outside int64 (the sampler's and Triton's range), including seed + n - 1;
- `chat_template_kwargs` keys that are not the template's own variables (a `chat_template` of the
  client's own, `tokenize`, `return_dict`...) unless `--trust-request-chat-template`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from server.errors import APIError, bad_request
from server.template_vars import template_variables

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MAX = 2**31 - 1
_JSON_OVERHEAD_BYTES = 1024 * 1024  # message structure, tools, sampling fields


def longest_token_chars(tokenizer) -> int:
    """The most characters one token can stand for: the longest vocabulary piece (a piece decodes to at
    most as many characters as it has: `▁` is one space, byte pieces are one byte)."""
    try:
        return max(1, max(len(piece) for piece in tokenizer.get_vocab()))
    except Exception:  # a tokenizer without a vocabulary listing: no size bound beyond the body cap
        return 1 << 20


def body_cap_bytes(max_model_len: int, token_chars: int, max_images: int, image_max_bytes: int) -> int:
    """The largest body a request that could fit needs: the text (4 UTF-8 bytes a character) plus the
    images as base64 data URLs (4/3 of their bytes), plus the JSON around them."""
    text = max_model_len * token_chars * 4
    images = max_images * math.ceil(image_max_bytes * 4 / 3)
    return text + images + _JSON_OVERHEAD_BYTES


def _too_long(min_tokens: int, max_model_len: int, param: str) -> APIError:
    return APIError(
        f"This model's maximum context length is {max_model_len} tokens, but the prompt has at least {min_tokens} tokens "
        "(counted from its size before tokenizing). Shorten the prompt.",
        400,
        param=param,
        code="context_length_exceeded",
    )


def _chat_text_chars(req) -> int:
    """Characters of message text that reach the prompt verbatim (the template trims each message)."""
    total = 0
    for m in req.messages:
        if isinstance(m.content, str):
            total += len(m.content.strip())
        elif m.content:
            total += sum(len((p.text or "").strip()) for p in m.content)
    return total


def _chat_images(req) -> int:
    return sum(
        1 for m in req.messages if isinstance(m.content, list) for p in m.content if p.type in ("image_url", "image")
    )


@dataclass(frozen=True)
class RequestGuard:
    settings: object  # ServerSettings
    max_model_len: int
    image_tokens: int  # tokens one image becomes at most (and at least: its soft tokens are fixed)
    token_chars: int  # longest_token_chars(tokenizer)
    vocab_size: int
    template_vars: frozenset[str]  # the chat template's own variables a request may set

    @classmethod
    def build(cls, settings, tokenizer, max_model_len: int, image_tokens: int, vocab_size: int) -> RequestGuard:
        return cls(
            settings,
            max_model_len,
            image_tokens,
            longest_token_chars(tokenizer),
            vocab_size,
            template_variables(getattr(tokenizer, "chat_template", None)),
        )

    # -- the size bound -----------------------------------------------------------------------------

    def min_tokens(self, chars: int) -> int:
        return -(-chars // self.token_chars)

    def check_chat_size(self, req) -> None:
        least = self.min_tokens(_chat_text_chars(req)) + _chat_images(req) * self.image_tokens
        if least >= self.max_model_len:
            raise _too_long(least, self.max_model_len, "messages")

    def check_completion_size(self, req) -> None:
        for prompt in req.prompts:
            least = self.min_tokens(len(prompt)) if isinstance(prompt, str) else len(prompt)
            if least >= self.max_model_len:
                raise _too_long(least, self.max_model_len, "prompt")

    # -- caps -----------------------------------------------------------------------------------------

    def check_sampling(self, req, sequences: int) -> None:
        s = self.settings
        if sequences > s.max_sequences_per_request:
            raise bad_request(
                f"This request asks for {sequences} sequences (prompts x n); the limit is {s.max_sequences_per_request} "
                "(--max-sequences-per-request).",
                param="n",
                code="too_many_sequences",
            )
        stops = req.stop_list
        if len(stops) > s.max_stop_strings:
            raise bad_request(
                f"At most {s.max_stop_strings} stop strings are allowed (--max-stop-strings); got {len(stops)}.",
                param="stop",
            )
        long = max((len(x) for x in stops), default=0)
        if long > s.max_stop_string_chars:
            raise bad_request(
                f"A stop string may have at most {s.max_stop_string_chars} characters (--max-stop-string-length); got {long}.",
                param="stop",
            )
        if req.seed is not None and not (INT64_MIN <= req.seed and req.seed + req.n - 1 <= INT64_MAX):
            raise bad_request(
                f"`seed` must be a 64-bit signed integer (with seed + n - 1 at most {INT64_MAX}).", param="seed"
            )
        if req.top_k is not None and req.top_k > INT32_MAX:
            raise bad_request(f"`top_k` must be at most {INT32_MAX}.", param="top_k")
        if req.min_tokens > self.max_model_len:
            raise bad_request(
                f"`min_tokens` must be at most the context length ({self.max_model_len}).", param="min_tokens"
            )
        bad_ids = [t for t in req.stop_token_ids or () if not 0 <= t < self.vocab_size]
        if bad_ids:
            raise bad_request(
                f"stop_token_ids must be in [0, {self.vocab_size}); got {bad_ids[0]}.", param="stop_token_ids"
            )

    def check_logprobs(self, count: int | None, param: str) -> None:
        if count is not None and count > self.settings.max_logprobs:
            raise bad_request(
                f"At most {self.settings.max_logprobs} logprobs may be asked for (--max-logprobs); got {count}.",
                param=param,
            )

    def check_tools(self, req) -> None:
        s = self.settings
        tools = req.tools or ()
        if len(tools) > s.max_tools:
            raise bad_request(
                f"At most {s.max_tools} tools are allowed (--max-tools); got {len(tools)}.", param="tools"
            )
        size = sum(len(json.dumps(t.model_dump(exclude_none=True), ensure_ascii=False)) for t in tools)
        if size > s.max_tools_bytes:
            raise bad_request(
                f"The tools' JSON may be at most {s.max_tools_bytes} bytes (--max-tools-bytes); got {size}.",
                param="tools",
            )

    def check_template_kwargs(self, req) -> None:
        kwargs = req.chat_template_kwargs or {}
        if self.settings.trust_request_chat_template:
            return
        foreign = sorted(k for k in kwargs if k not in self.template_vars)
        if foreign:
            allowed = ", ".join(sorted(self.template_vars)) or "none"
            raise bad_request(
                f"chat_template_kwargs may only set the chat template's own variables ({allowed}); not allowed: {', '.join(foreign)[:200]}.",
                param="chat_template_kwargs",
            )

    # -- per endpoint -------------------------------------------------------------------------------

    def check_chat(self, req) -> None:
        self.check_sampling(req, req.n)
        self.check_logprobs(req.top_logprobs, "top_logprobs")
        self.check_tools(req)
        self.check_template_kwargs(req)
        self.check_chat_size(req)

    def check_completion(self, req) -> None:
        self.check_sampling(req, len(req.prompts) * req.n)
        self.check_logprobs(req.logprobs, "logprobs")
        self.check_completion_size(req)
