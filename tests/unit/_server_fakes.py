"""A scripted Backend for the server's unit tests: it replays given model text in given pieces, so
chunk shapes, error paths and aborts can be checked exactly. The real runtime is exercised by
tests/e2e/test_openai_server.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from engine_builder.tiny.tokenizer import make_tiny_tokenizer
from gemma_runtime.api import EngineStats, GenerateRequest, RequestError, RequestOutput, TokenLogprob, Usage
from gemma_runtime.engine_format.spec import EngineSpec, LayerSpec, MultimodalSpec, TextSpec, TokenSpec, VisionSpec

_TOKENIZER = None


def tiny_tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = make_tiny_tokenizer()
    return _TOKENIZER


def tiny_spec(max_model_len: int = 256, vision: bool = True) -> EngineSpec:
    layer = LayerSpec(type="sliding", head_dim=16, num_kv_heads=2, k_eq_v=False, rope_theta=1e4, rope_angles=8)
    text = TextSpec(
        vocab_size=512,
        hidden_size=64,
        num_layers=1,
        num_attention_heads=4,
        intermediate_size=96,
        rms_norm_eps=1e-6,
        final_logit_softcapping=30.0,
        sliding_window=8,
        embed_scale=8.0,
        layers=(layer,),
    )
    vis = VisionSpec(32, 64, 1, 2, 16, 16, 3, 64, 100.0, 1e-6, False, default_output_length=16) if vision else None
    mm = MultimodalSpec(image_token_id=19, boi_token_id=17, eoi_token_id=18) if vision else None
    return EngineSpec(
        model_name="google/gemma-4-tiny-it",
        architecture="Gemma4ForConditionalGeneration",
        dtype="float32",
        max_model_len=max_model_len,
        text=text,
        tokens=TokenSpec(2, 1, 0),
        stop_token_ids=(1, 6, 14),
        vision=vis,
        multimodal=mm,
    )


@dataclass
class Script:
    pieces: list[str]  # the model's text, one RequestOutput per piece
    finish_reason: str = "stop"
    error_after: int | None = None  # raise RuntimeError after this many pieces (mid-stream failure)
    refuse: str | None = None  # raise RequestError before the first output
    delay_s: float = 0.0  # between pieces (lets a test disconnect mid-stream)


@dataclass
class FakeBackend:
    script: Script
    spec: EngineSpec = field(default_factory=tiny_spec)
    generation_defaults: dict = field(default_factory=lambda: {"temperature": 1.0, "top_p": 0.95, "top_k": 64})
    requests: list[GenerateRequest] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    healthy: bool = True

    def __post_init__(self) -> None:
        self.tokenizer = tiny_tokenizer()

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def health(self) -> bool:
        return self.healthy

    def stats(self) -> EngineStats:
        running = len(self.requests) - len(self.finished) - len(self.aborted)
        return EngineStats(num_running=running, num_waiting=0, kv_blocks_total=100, kv_blocks_free=100 - 10 * running)

    async def abort(self, request_id: str) -> None:
        if request_id not in self.finished and request_id not in self.aborted:
            self.aborted.append(request_id)

    async def generate(self, request: GenerateRequest):
        s = self.script
        if s.refuse:
            raise RequestError(s.refuse)
        self.requests.append(request)
        prompt_len = len(request.prompt) if isinstance(request.prompt, list) else 10
        pieces = s.pieces[: request.sampling.max_tokens]
        for i, piece in enumerate(pieces):
            if s.error_after is not None and i == s.error_after:
                raise RuntimeError("engine step failed: injected")
            if s.delay_s:
                await asyncio.sleep(s.delay_s)
            last = i == len(pieces) - 1
            reason = ("length" if len(s.pieces) > request.sampling.max_tokens else s.finish_reason) if last else None
            lps = None
            if request.sampling.logprobs is not None:
                top = tuple((100 + k, -0.5 - k) for k in range(request.sampling.logprobs))
                lps = (TokenLogprob(token_id=100 + i % 50, logprob=-0.5, top=top),)
            if last:
                self.finished.append(request.request_id)
            yield RequestOutput(
                request_id=request.request_id,
                token_ids=(100 + i % 50,),
                text=piece,
                logprobs=lps,
                finished=last,
                finish_reason=reason,
                usage=Usage(prompt_len, len(pieces)) if last else None,
            )
