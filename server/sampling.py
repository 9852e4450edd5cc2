"""A request's numbers to the runtime's: the completion length within the context, and the request's
sampling fields (falling back to the engine's generation defaults) as SamplingParams."""

from __future__ import annotations

from gemma_runtime.api import SamplingParams
from server.context import Limits
from server.errors import APIError, bad_request
from server.structured import logit_bias_pairs


def resolve_max_tokens(requested: int | None, prompt_len: int, limits: Limits, param: str) -> int:
    """The engine cannot go past max_model_len: a prompt or a max_tokens that would is a 400."""
    room = limits.max_model_len - prompt_len
    if room < 1:
        raise APIError(
            f"This model's maximum context length is {limits.max_model_len} tokens, but the prompt has {prompt_len} tokens. "
            "Shorten the prompt.",
            400,
            param="messages" if param == "max_completion_tokens" else "prompt",
            code="context_length_exceeded",
        )
    if requested is None:
        return room
    if requested > room:
        raise APIError(
            f"This model's maximum context length is {limits.max_model_len} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the completion). "
            "Reduce the prompt or the maximum number of tokens.",
            400,
            param=param,
            code="context_length_exceeded",
        )
    return requested


def sampling_params(
    req,
    defaults: dict,
    *,
    max_tokens: int,
    seed_offset: int,
    logprobs: int | None,
    skip_special_tokens: bool,
    structured=None,
) -> SamplingParams:
    """Request fields, falling back to the engine's generation_config defaults (as vLLM does).
    `structured`: the grammar the reply must follow (server/structured.py)."""

    def pick(name: str, fallback):
        value = getattr(req, name)
        return value if value is not None else defaults.get(name, fallback)

    top_k = pick("top_k", 0)
    seed = req.seed + seed_offset if req.seed is not None else None
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=float(pick("temperature", 1.0)),
            top_p=float(pick("top_p", 1.0)),
            top_k=max(int(top_k or 0), 0),  # OpenAI-style -1 and 0 both mean off
            min_p=float(pick("min_p", 0.0)),
            seed=seed,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            stop=req.stop_list,
            stop_token_ids=tuple(req.stop_token_ids or ()),
            ignore_eos=req.ignore_eos,
            logprobs=logprobs,
            skip_special_tokens=skip_special_tokens,
            min_tokens=req.min_tokens,
            logit_bias=logit_bias_pairs(req.logit_bias),
            structured=structured,
        )
    except ValueError as e:
        raise bad_request(str(e))
