"""Runtime TokenLogprobs -> the two OpenAI logprobs shapes (chat and legacy completions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from gemma_runtime.api import TokenLogprob

_FLOOR = -9999.0  # -inf is not JSON; OpenAI clients expect a finite float


def _finite(lp: float) -> float:
    return lp if math.isfinite(lp) else _FLOOR


class TokenText:
    """Token id -> its text, cached (the same ids recur constantly)."""

    def __init__(self, tokenizer) -> None:
        self._decode = lru_cache(maxsize=65536)(lambda tid: tokenizer.decode([tid], skip_special_tokens=False))

    def __call__(self, token_id: int) -> str:
        return self._decode(token_id)


def _entry(text: TokenText, token_id: int, lp: float) -> dict:
    tok = text(token_id)
    return {"token": tok, "logprob": _finite(lp), "bytes": list(tok.encode("utf-8"))}


def chat_logprobs(text: TokenText, lps: Sequence[TokenLogprob], top_n: int) -> dict:
    content = []
    for lp in lps:
        item = _entry(text, lp.token_id, lp.logprob)
        item["top_logprobs"] = [_entry(text, tid, v) for tid, v in lp.top[:top_n]]
        content.append(item)
    return {"content": content, "refusal": None}


def completion_logprobs(text: TokenText, lps: Sequence[TokenLogprob], top_n: int, offset: int = 0) -> dict:
    tokens, token_logprobs, top, offsets = [], [], [], []
    for lp in lps:
        tok = text(lp.token_id)
        tokens.append(tok)
        token_logprobs.append(_finite(lp.logprob))
        top.append({text(tid): _finite(v) for tid, v in lp.top[:top_n]} if top_n else None)
        offsets.append(offset)
        offset += len(tok)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}
