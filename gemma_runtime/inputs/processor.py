"""Request -> engine input: tokenize the prompt, decode and preprocess images, expand image placeholders.

Runs in the caller's thread (or an executor), never on the engine loop.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from gemma_runtime.api import GenerateRequest, RequestError
from gemma_runtime.engine_format.spec import EngineSpec
from gemma_runtime.scheduling.prefix_cache import image_content_hash
from gemma_runtime.scheduling.sequence import ImageSpan

SOFT_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)
MAX_IMAGE_TOKENS = max(SOFT_TOKEN_BUDGETS) + 2  # one image's span with <|image> and <image|>


@dataclass(frozen=True)
class PreparedInput:
    token_ids: list[int]
    images: list  # PreprocessedImage, one per image, in prompt order
    image_spans: list[ImageSpan]  # where each image's soft tokens sit in token_ids
    grammar: object | None = None  # the compiled grammar of a constrained request (gemma_runtime/grammar)
    image_hashes: tuple[bytes, ...] = ()  # each image's content hash: names its pages in the prefix cache


class InputProcessor:
    def __init__(self, spec: EngineSpec, tokenizer, max_model_len: int, default_soft_tokens: int):
        self.spec = spec
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.default_soft_tokens = default_soft_tokens

    def tokenize(self, prompt: str) -> list[int]:
        # The chat template writes <bos> itself: adding special tokens here would double it.
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    def process(self, request: GenerateRequest) -> PreparedInput:
        ids = self.tokenize(request.prompt) if isinstance(request.prompt, str) else list(request.prompt)
        if not ids:
            raise RequestError("the prompt is empty")
        vocab = self.spec.text.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise RequestError(f"prompt token ids must be in [0, {vocab})")
        images, spans = [], []
        mm = self.spec.multimodal
        placeholder = mm.image_token_id if mm else None
        num_placeholders = ids.count(placeholder) if placeholder is not None else 0
        if request.images or num_placeholders:
            if self.spec.vision is None:
                raise RequestError("this engine has no vision tower: images are not supported")
            if num_placeholders != len(request.images):
                raise RequestError(
                    f"the prompt has {num_placeholders} image placeholders for {len(request.images)} images"
                )
            budget = request.image_max_soft_tokens or self.default_soft_tokens
            if budget not in SOFT_TOKEN_BUDGETS:
                raise RequestError(f"image_max_soft_tokens must be one of {SOFT_TOKEN_BUDGETS}")
            images = [self._preprocess(img, budget) for img in request.images]
            ids, spans = self._expand(ids, [im.num_soft_tokens for im in images])
        total = len(ids) + request.sampling.max_tokens
        if len(ids) >= self.max_model_len:
            raise RequestError(
                f"the prompt has {len(ids)} tokens; this engine's maximum context is {self.max_model_len}"
            )
        if total > self.max_model_len:
            raise RequestError(
                f"the prompt ({len(ids)} tokens) plus max_tokens ({request.sampling.max_tokens}) "
                f"exceeds this engine's maximum context of {self.max_model_len} tokens"
            )
        # hashed here, off the engine loop: the pixels of a large image take milliseconds
        return PreparedInput(
            ids, images, spans, image_hashes=tuple(image_content_hash(im.pixel_values) for im in images)
        )

    def _preprocess(self, image, budget: int):
        from gemma_runtime.inputs.image_preprocess import preprocess_image

        if isinstance(image, (bytes, bytearray)):
            try:
                image = Image.open(io.BytesIO(image))
                image.load()
            except Exception as exc:  # noqa: BLE001  Pillow raises many types for bad data
                raise RequestError(f"cannot decode image: {exc}") from exc
        v = self.spec.vision
        return preprocess_image(
            image, patch_size=v.patch_size, pooling_kernel_size=v.pooling_kernel_size, max_soft_tokens=budget
        )

    def _expand(self, ids: list[int], counts: list[int]) -> tuple[list[int], list[ImageSpan]]:
        """Each <|image|> becomes <|image> + N x <|image|> + <image|>."""
        mm = self.spec.multimodal
        out: list[int] = []
        spans: list[ImageSpan] = []
        counts_iter = iter(counts)
        for t in ids:
            if t != mm.image_token_id:
                out.append(t)
                continue
            n = next(counts_iter)
            out.append(mm.boi_token_id)
            spans.append(ImageSpan(len(out), len(out) + n))
            out.extend([mm.image_token_id] * n)
            out.append(mm.eoi_token_id)
        return out, spans
