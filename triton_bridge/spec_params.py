"""The speculative-decoding parameters of config.pbtxt (strings, as Triton keeps them) as RuntimeConfig
fields: `speculative`, `num_speculative_tokens`, `speculative_max_batch`; an empty value means the
runtime's default."""

from __future__ import annotations

PARAMS = {"speculative": str, "num_speculative_tokens": int, "speculative_max_batch": int}


def speculative_overrides(params: dict[str, str]) -> dict:
    out = {}
    for key, cast in PARAMS.items():
        value = (params.get(key) or "").strip()
        if value:
            try:
                out[key] = cast(value)
            except ValueError:
                raise ValueError(f"parameter {key} must be a {cast.__name__}, not {value!r}") from None
    return out
