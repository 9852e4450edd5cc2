"""The structured-output and logit-bias inputs of the gemma4 Triton model, both directions.

`structured_output` is one string tensor holding the JSON of the runtime's `StructuredOutput`
(`{"kind": "json_schema", "source": "<schema JSON>", "thought": "none"}`), so a `generate_stream` caller
can pass it as a top-level JSON key too. Logit bias is two aligned tensors, token ids and biases.
The tensor declarations are in server/triton_protocol.py with the others.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from gemma_runtime.api import SamplingParams
from gemma_runtime.grammar.spec import StructuredOutput


def encode(sampling: SamplingParams) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    if sampling.structured is not None:
        tensors["structured_output"] = np.array([json.dumps(asdict(sampling.structured)).encode()], dtype=np.object_)
    if sampling.logit_bias:
        tensors["logit_bias_ids"] = np.array([t for t, _ in sampling.logit_bias], dtype=np.int32)  # [n]
        tensors["logit_bias_values"] = np.array([b for _, b in sampling.logit_bias], dtype=np.float32)  # [n]
    return tensors


def decode(get: Callable[[str], np.ndarray | None]) -> dict[str, Any]:
    """SamplingParams keyword arguments from the tensors; ValueError for malformed ones."""
    kwargs: dict[str, Any] = {}
    raw = get("structured_output")
    if raw is not None:
        value = raw.reshape(-1)[0]
        try:
            fields = json.loads(value.decode() if isinstance(value, bytes) else str(value))
            kwargs["structured"] = StructuredOutput(**fields)
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"structured_output must be the JSON of {{kind, source, thought}}: {e}") from None
    ids, values = get("logit_bias_ids"), get("logit_bias_values")
    if (ids is None) != (values is None):
        raise ValueError("logit_bias_ids and logit_bias_values go together")
    if ids is not None:
        ids, values = ids.reshape(-1), values.reshape(-1)
        if ids.size != values.size:
            raise ValueError(f"logit_bias_ids has {ids.size} entries but logit_bias_values {values.size}")
        # float32 -> the sender's decimal, as for the other FP32 inputs
        kwargs["logit_bias"] = tuple((int(t), float(str(v))) for t, v in zip(ids, values))
    return kwargs
