"""The gemma4 Triton model's tensors, shared by the model (triton_model_repo/gemma4/1/model.py) and the
client (triton_bridge/client.py) so the two sides cannot drift apart.

Everything here works on plain numpy arrays keyed by tensor name: the model wraps them in
`pb_utils.Tensor`, the client in `tritonclient` `InferInput`s. See triton_model_repo/README.md.

Sampling parameters are one named tensor each (Triton's convention, as in TensorRT-LLM's models):
Triton checks their dtype and shape against config.pbtxt, `/v2/models/gemma4` lists them, and the
`generate_stream` endpoint maps top-level JSON keys onto them by name (`{"text_input": .., "max_tokens": 8}`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from gemma_runtime.api import GenerateRequest, RequestOutput, SamplingParams, TokenLogprob, Usage
from triton_bridge import structured as triton_structured

MODEL_NAME = "gemma4"  # the model's folder in triton_model_repo/ and its name on the server
# Beside config.pbtxt: the engine directory the backend loads when config.pbtxt names none (`make triton` writes it).
ENGINE_PATH_FILE = "engine_path.txt"

# Error messages travel as plain text over ModelStreamInfer (the gRPC status code is lost on the way),
# so the kind of error rides in a prefix: the client maps it back to RequestError (HTTP 400).
INVALID_REQUEST_PREFIX = "invalid request: "
ENGINE_ERROR_PREFIX = "engine error: "
OVERLOADED_PREFIX = "overloaded: "  # beyond max_queued_requests, or unloading: the translator answers 503

# Prometheus gauges the model publishes on Triton's metrics port (EngineStats field -> metric name).
STATS_METRICS = {
    "num_running": "gemma4_num_running",
    "num_waiting": "gemma4_num_waiting",
    "kv_blocks_total": "gemma4_kv_blocks_total",
    "kv_blocks_free": "gemma4_kv_blocks_free",
    "prefix_cache_queries": "gemma4_prefix_cache_queries",
    "prefix_cache_hits": "gemma4_prefix_cache_hits",
    "spec_decode_drafted": "gemma4_spec_decode_drafted",
    "spec_decode_accepted": "gemma4_spec_decode_accepted",
    "spec_decode_verifies": "gemma4_spec_decode_verifies",
    "spec_decode_emitted": "gemma4_spec_decode_emitted",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 datatype (BYTES, INT32, ...)
    dims: tuple[int, ...]
    doc: str


# --- inputs ----------------------------------------------------------------------------------------

PROMPT_INPUTS = (
    TensorSpec("text_input", "BYTES", (1,), "prompt text (UTF-8), tokenized without adding <bos>"),
    TensorSpec("input_ids", "INT32", (-1,), "prompt token ids (instead of text_input)"),
    TensorSpec("images", "BYTES", (-1,), "encoded images (PNG/JPEG/GIF bytes), one per <|image|> in the prompt"),
    TensorSpec("image_max_soft_tokens", "INT32", (1,), "70, 140, 280, 560 or 1120 soft tokens per image"),
)

# SamplingParams field -> tensor. Scalars are dims [1]; list fields are [-1].
SAMPLING_INPUTS = (
    TensorSpec("max_tokens", "INT32", (1,), "tokens to generate at most"),
    TensorSpec("temperature", "FP32", (1,), "0 means greedy"),
    TensorSpec("top_p", "FP32", (1,), "nucleus sampling mass"),
    TensorSpec("top_k", "INT32", (1,), "0 means off"),
    TensorSpec("min_p", "FP32", (1,), "minimum probability relative to the top token"),
    TensorSpec("seed", "INT64", (1,), "per-request sampling seed"),
    TensorSpec("presence_penalty", "FP32", (1,), "OpenAI presence penalty"),
    TensorSpec("frequency_penalty", "FP32", (1,), "OpenAI frequency penalty"),
    TensorSpec("stop", "BYTES", (-1,), "stop strings"),
    TensorSpec("stop_token_ids", "INT32", (-1,), "extra stop token ids"),
    TensorSpec("ignore_eos", "BOOL", (1,), "only max_tokens ends the request"),
    TensorSpec("include_stop_str_in_output", "BOOL", (1,), "keep the matched stop string in the text"),
    TensorSpec("logprobs", "INT32", (1,), "return the sampled token's logprob plus the top k (0..20)"),
    TensorSpec("skip_special_tokens", "BOOL", (1,), "drop special tokens from text_output"),
    TensorSpec("min_tokens", "INT32", (1,), "stop ids and strings are ignored before this many tokens"),
)

# constrained decoding and logit bias (triton_bridge/structured.py)
STRUCTURED_INPUTS = (
    TensorSpec(
        "structured_output", "BYTES", (1,), 'JSON {"kind": json_schema|json_object|tool_calls, "source", "thought"}'
    ),
    TensorSpec("logit_bias_ids", "INT32", (-1,), "token ids whose logits get a bias"),
    TensorSpec("logit_bias_values", "FP32", (-1,), "the bias of each id in logit_bias_ids, -100..100"),
)

INPUTS = PROMPT_INPUTS + SAMPLING_INPUTS + STRUCTURED_INPUTS

# --- outputs ---------------------------------------------------------------------------------------

OUTPUTS = (
    TensorSpec("output_ids", "INT32", (-1,), "token ids generated since the previous response"),
    TensorSpec("text_output", "BYTES", (1,), "text delta for output_ids (stop strings removed)"),
    TensorSpec("finish_reason", "BYTES", (1,), "'' while streaming; stop, length, abort or error on the last response"),
    TensorSpec("stop_token_id", "INT32", (1,), "last response: the stop token id that ended it, else -1"),
    TensorSpec("stop_string", "BYTES", (1,), "last response: the stop string that ended it, else ''"),
    TensorSpec("prompt_tokens", "INT32", (1,), "last response only: usage"),
    TensorSpec("completion_tokens", "INT32", (1,), "last response only: usage"),
    TensorSpec("cached_tokens", "INT32", (1,), "last response only: prompt tokens served from the prefix cache"),
    TensorSpec("output_log_probs", "FP32", (-1,), "with logprobs: each output token's logprob"),
    TensorSpec("top_logprobs", "BYTES", (1,), "with logprobs: JSON [[[token_id, logprob], ...] per output token]"),
)

NUMPY_DTYPES = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "BOOL": np.bool_}
_SAMPLING_FIELDS = {f.name for f in fields(SamplingParams)}


def _bytes(values) -> np.ndarray:
    return np.array([v if isinstance(v, bytes) else str(v).encode() for v in values], dtype=np.object_)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _flat(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1)  # any shape Triton hands over ([n], [1, n], ...) -> [n]


def _first(array: np.ndarray):
    return _flat(array)[0]


# --- client side: GenerateRequest -> tensors ---------------------------------------------------------


def encode_request(request: GenerateRequest) -> dict[str, np.ndarray]:
    """The input tensors of one request. Sampling fields equal to SamplingParams' defaults are left out."""
    tensors: dict[str, np.ndarray] = {}
    if isinstance(request.prompt, str):
        tensors["text_input"] = _bytes([request.prompt])
    else:
        tensors["input_ids"] = np.asarray(request.prompt, dtype=np.int32)  # [num_prompt_tokens]
    if request.images:
        tensors["images"] = _bytes([_image_bytes(img) for img in request.images])
    if request.image_max_soft_tokens is not None:
        tensors["image_max_soft_tokens"] = np.array([request.image_max_soft_tokens], dtype=np.int32)
    defaults = SamplingParams()
    for spec in SAMPLING_INPUTS:
        value = getattr(request.sampling, spec.name)
        if value == getattr(defaults, spec.name) or value is None:
            continue
        if spec.datatype == "BYTES":
            tensors[spec.name] = _bytes(value)
        elif spec.dims == (-1,):
            tensors[spec.name] = np.asarray(value, dtype=NUMPY_DTYPES[spec.datatype])
        else:
            tensors[spec.name] = np.array([value], dtype=NUMPY_DTYPES[spec.datatype])
    tensors.update(triton_structured.encode(request.sampling))
    return tensors


def _image_bytes(image) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    import io  # a PIL image: re-encode losslessly, the model decodes it again

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --- model side: tensors -> GenerateRequest ----------------------------------------------------------


def decode_request(request_id: str, get: Callable[[str], np.ndarray | None]) -> GenerateRequest:
    """Builds the runtime request from input tensors; `get(name)` returns the array or None when absent.
    Raises ValueError with a message fit for the caller."""
    text, ids = get("text_input"), get("input_ids")
    if (text is None) == (ids is None):
        raise ValueError("give exactly one of text_input (the prompt text) or input_ids (prompt token ids)")
    if text is not None:
        if text.size != 1:
            raise ValueError(f"text_input must hold one string, got {text.size}")
        prompt: str | list[int] = _text(_first(text))
    else:
        prompt = [int(t) for t in _flat(ids)]
        if not prompt:
            raise ValueError("input_ids is empty")
    images = get("images")
    soft = get("image_max_soft_tokens")
    kwargs: dict[str, Any] = {}
    for spec in SAMPLING_INPUTS:
        arr = get(spec.name)
        if arr is None:
            continue
        flat = _flat(arr)
        if spec.dims == (-1,):
            kwargs[spec.name] = tuple(_text(v) if spec.datatype == "BYTES" else int(v) for v in flat)
        elif flat.size != 1:
            raise ValueError(f"{spec.name} must hold one value, got {flat.size}")
        elif flat.dtype == np.float32:
            # FP32 tensors turn 0.9 into 0.89999998: float32's shortest repr gives the sender's 0.9 back.
            kwargs[spec.name] = float(str(flat[0]))
        else:
            kwargs[spec.name] = flat[0].item()
    kwargs.update(triton_structured.decode(get))
    sampling = SamplingParams(**kwargs)  # its __post_init__ validates ranges
    return GenerateRequest(
        request_id=request_id,
        prompt=prompt,
        sampling=sampling,
        images=tuple(bytes(b) for b in _flat(images)) if images is not None else (),
        image_max_soft_tokens=int(_first(soft)) if soft is not None else None,
    )


# --- model side: RequestOutput -> tensors -------------------------------------------------------------


def encode_output(out: RequestOutput) -> dict[str, np.ndarray]:
    tensors = {
        "output_ids": np.asarray(out.token_ids, dtype=np.int32),  # [num_new_tokens]
        "text_output": _bytes([out.text]),
        "finish_reason": _bytes([out.finish_reason or ""]),
    }
    if out.finished:
        stop = out.stop_reason
        tensors["stop_token_id"] = np.array([stop if isinstance(stop, int) else -1], dtype=np.int32)
        tensors["stop_string"] = _bytes([stop if isinstance(stop, str) else ""])
    if out.usage is not None:
        tensors["prompt_tokens"] = np.array([out.usage.prompt_tokens], dtype=np.int32)
        tensors["completion_tokens"] = np.array([out.usage.completion_tokens], dtype=np.int32)
        tensors["cached_tokens"] = np.array([out.usage.cached_tokens], dtype=np.int32)
    if out.logprobs is not None:
        tensors["output_log_probs"] = np.array([lp.logprob for lp in out.logprobs], dtype=np.float32)
        tops = [[[t, lp] for t, lp in item.top] for item in out.logprobs]
        tensors["top_logprobs"] = _bytes([json.dumps(tops)])
    return tensors


# --- client side: tensors -> RequestOutput -------------------------------------------------------------


def decode_output(request_id: str, get: Callable[[str], np.ndarray | None], final: bool) -> RequestOutput:
    ids = get("output_ids")
    token_ids = tuple(int(t) for t in _flat(ids)) if ids is not None else ()
    text = get("text_output")
    reason = get("finish_reason")
    finish_reason = _text(_first(reason)) if reason is not None else ""
    stop_reason: int | str | None = None
    stop_id, stop_str = get("stop_token_id"), get("stop_string")
    if stop_id is not None and int(_first(stop_id)) >= 0:
        stop_reason = int(_first(stop_id))
    elif stop_str is not None and _text(_first(stop_str)):
        stop_reason = _text(_first(stop_str))
    usage = None
    prompt_tokens, completion_tokens = get("prompt_tokens"), get("completion_tokens")
    if prompt_tokens is not None and completion_tokens is not None:
        cached = get("cached_tokens")
        usage = Usage(
            int(_first(prompt_tokens)), int(_first(completion_tokens)), int(_first(cached)) if cached is not None else 0
        )
    logprobs = None
    lps = get("output_log_probs")
    if lps is not None:
        tops_arr = get("top_logprobs")
        tops = json.loads(_text(_first(tops_arr))) if tops_arr is not None else [[] for _ in token_ids]
        logprobs = tuple(
            TokenLogprob(tid, float(lp), tuple((int(t), float(v)) for t, v in top))
            for tid, lp, top in zip(token_ids, _flat(lps), tops)
        )
    return RequestOutput(
        request_id=request_id,
        token_ids=token_ids,
        text=_text(_first(text)) if text is not None else "",
        logprobs=logprobs,
        finished=final or bool(finish_reason),
        finish_reason=finish_reason or ("abort" if final else None),  # type: ignore[arg-type]
        stop_reason=stop_reason,
        usage=usage,
    )


def parse_stats_metrics(text: str) -> dict[str, float]:
    """EngineStats fields from Triton's Prometheus text (the gauges in STATS_METRICS)."""
    by_metric = {v: k for k, v in STATS_METRICS.items()}
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in by_metric:
            found[by_metric[name]] = float(line.rsplit(" ", 1)[1])
    return found


assert {s.name for s in SAMPLING_INPUTS} <= _SAMPLING_FIELDS, "every sampling tensor names a SamplingParams field"
