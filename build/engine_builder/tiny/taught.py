"""The taught tiny model: a tiny Gemma 4 (MoE, vision tower) trained on CPU to reproduce TAUGHT_CONVERSATIONS.

A random tiny model writes noise, so end-to-end tests could never see a real tool call or thought
channel come out of the server. This one learns each corpus reply by heart (AdamW, loss on the reply
tokens only, seeded), and the build fails unless transformers' greedy decoding reproduces every
reply exactly, stop token included. The runtime's greedy output equals transformers', so the served
engine answers the corpus requests with the same replies.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from gemma_runtime.config import RuntimeConfig
from gemma_runtime.inputs.image_preprocess import preprocess_image

from .random_checkpoint import perturb_, tiny_config
from .taught_corpus import TAUGHT_CONVERSATIONS
from .tokenizer import load_chat_template, make_tiny_tokenizer, save_tiny_tokenizer

# Images are expanded at the runtime's default budget, so a request without image_max_soft_tokens
# gives the served model the prompt it was trained on.
TAUGHT_IMAGE_SOFT_TOKENS: int = RuntimeConfig.default_image_soft_tokens
# The taught model memorised its replies by greedy decoding; sampled at the real models' temperature 1.0
# it wanders off them. Its engine defaults to greedy (requests can still ask for sampling).
TAUGHT_GENERATION_DEFAULTS = dict(do_sample=False)


@dataclass(frozen=True)
class TrainSettings:
    lr: float = 3e-3
    weight_decay: float = 0.0
    max_steps: int = 400  # give up past this many steps (it takes about 40)
    check_every: int = 5  # look at the margins every few steps; decode only once they all clear
    # every reply token must beat the runner-up logit by this much before we stop: room for the
    # runtime's different (float32) kernels to round differently without flipping an argmax
    margin: float = 2.0
    num_threads: int = 2  # fixed, so the same seed gives the same weights whatever the machine's core count


@dataclass(frozen=True)
class Example:
    """One conversation as token ids: prompt (images expanded) + reply."""

    name: str
    ids: tuple[int, ...]
    prompt_len: int
    images: tuple  # PIL images, in prompt order


def render_prompt(tokenizer, conversation: dict) -> str:
    """The generation prompt the server renders for this conversation."""
    return tokenizer.apply_chat_template(
        conversation["messages"],
        tools=conversation.get("tools"),
        tokenize=False,
        add_generation_prompt=True,
        **conversation.get("chat_template_kwargs", {}),
    )


def expand_images(ids: list[int], counts: list[int], *, image_id: int, boi_id: int, eoi_id: int) -> list[int]:
    """Each <|image|> becomes <|image> + N x <|image|> + <image|>, as the runtime's InputProcessor does."""
    out: list[int] = []
    counts_iter = iter(counts)
    for t in ids:
        if t == image_id:
            out += [boi_id] + [image_id] * next(counts_iter) + [eoi_id]
        else:
            out.append(t)
    return out


def encode(tokenizer, config, conversation: dict, budget: int = TAUGHT_IMAGE_SOFT_TOKENS) -> Example:
    images = tuple(spec.image() for spec in conversation.get("images", ()))
    vision = config.vision_config
    counts = [
        preprocess_image(
            im, patch_size=vision.patch_size, pooling_kernel_size=vision.pooling_kernel_size, max_soft_tokens=budget
        ).num_soft_tokens
        for im in images
    ]
    prompt = tokenizer.encode(render_prompt(tokenizer, conversation), add_special_tokens=False)
    if prompt.count(config.image_token_id) != len(images):
        raise ValueError(
            f"{conversation['name']}: {prompt.count(config.image_token_id)} image placeholders for {len(images)} images"
        )
    prompt = expand_images(
        prompt, counts, image_id=config.image_token_id, boi_id=config.boi_token_id, eoi_id=config.eoi_token_id
    )
    reply = tokenizer.encode(conversation["reply"], add_special_tokens=False)
    return Example(conversation["name"], tuple(prompt + reply), len(prompt), images)


def image_inputs(images, config, budget: int = TAUGHT_IMAGE_SOFT_TOKENS) -> dict:
    """pixel_values and image_position_ids from transformers' own processor (the reference path)."""
    if not images:
        return {}
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    v = config.vision_config
    processor = Gemma4ImageProcessorPil(patch_size=v.patch_size, pooling_kernel_size=v.pooling_kernel_size)
    out = processor(images=list(images), max_soft_tokens=budget, return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "image_position_ids": out["image_position_ids"]}


def _mm_types(ids: torch.Tensor, image_id: int) -> torch.Tensor:
    return (ids == image_id).long()


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [B, T] right-padded: causal attention never looks at the padding
    labels: torch.Tensor  # [B, T] the next token at reply positions, -100 elsewhere
    kwargs: dict  # image inputs and mm_token_type_ids


def make_batch(examples: list[Example], config) -> Batch:
    pad = config.text_config.pad_token_id
    width = max(len(e.ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, e in enumerate(examples):
        ids = torch.tensor(e.ids)
        input_ids[row, : len(ids)] = ids
        # position i predicts token i+1: reply tokens are predicted from prompt_len-1 to len-2
        labels[row, e.prompt_len - 1 : len(ids) - 1] = ids[e.prompt_len :]
    images = [im for e in examples for im in e.images]
    kwargs = dict(image_inputs(images, config), mm_token_type_ids=_mm_types(input_ids, config.image_token_id))
    return Batch(input_ids, labels, kwargs)


def reply_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per reply token: target logit minus the best other logit (positive means greedy picks it)."""
    mask = labels != -100
    picked = logits[mask]  # [N, V]
    target = labels[mask]  # [N]
    target_logit = picked.gather(-1, target[:, None])[:, 0]
    others = picked.scatter(-1, target[:, None], float("-inf"))
    return target_logit - others.max(-1).values


@torch.inference_mode()
def greedy_reply(model, tokenizer, config, example: Example, stop_ids: list[int]) -> str:
    """transformers' greedy continuation of the example's prompt, decoded with special tokens kept."""
    prompt = torch.tensor([example.ids[: example.prompt_len]])
    kwargs = dict(image_inputs(example.images, config))
    if example.images:
        kwargs["mm_token_type_ids"] = _mm_types(prompt, config.image_token_id)
    max_new = len(example.ids) - example.prompt_len + 8  # room to show a reply that fails to stop
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=max_new,
        eos_token_id=stop_ids,
        pad_token_id=config.text_config.pad_token_id,
        **kwargs,
    )
    return tokenizer.decode(out[0, example.prompt_len :].tolist(), skip_special_tokens=False)


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def weights_digest(model) -> str:
    """sha256 over every tensor of the state dict, in order: equal digests mean equal weights."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def stop_token_ids(tokenizer) -> list[int]:
    return tokenizer.convert_tokens_to_ids(["<eos>", "<turn|>", "<|tool_response>"])


def mismatches(model, tokenizer, config, examples: list[Example]) -> dict[str, str]:
    """{name: what greedy decoding wrote} for every conversation whose reply is not reproduced."""
    by_name = {c["name"]: c["reply"] for c in TAUGHT_CONVERSATIONS}
    stops = stop_token_ids(tokenizer)
    got = {e.name: greedy_reply(model, tokenizer, config, e, stops) for e in examples}
    return {name: text for name, text in got.items() if text != by_name[name]}


def _freeze_vision(model, batch: Batch) -> Batch:
    """Freeze the vision tower and its projector and compute the image features once.

    They stay random: random features already tell images apart, and the text model learns to read
    them. This drops the vision forward and backward from every step."""
    for module in (model.model.vision_tower, model.model.embed_vision):
        module.requires_grad_(False)
    kwargs = dict(batch.kwargs)
    if "pixel_values" in kwargs:
        with torch.no_grad():
            features = model.model.get_image_features(kwargs.pop("pixel_values"), kwargs.pop("image_position_ids"))
        kwargs["mm_encoder_outputs"] = {"image": features}
    return Batch(batch.input_ids, batch.labels, kwargs)


def train(
    model, tokenizer, config, examples: list[Example], *, steps: int | None, settings: TrainSettings, log=None
) -> int:
    """AdamW on the reply tokens; returns the steps taken. With steps=None, train until greedy decoding
    reproduces every reply (tried once every reply token clears the margin), else raise."""
    batch = _freeze_vision(model, make_batch(examples, config))
    mask = batch.labels != -100
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.98))
    limit = steps if steps is not None else settings.max_steps
    for step in range(1, limit + 1):
        model.train()
        logits = model(input_ids=batch.input_ids, **batch.kwargs).logits  # [B, T, V]
        loss = torch.nn.functional.cross_entropy(logits[mask], batch.labels[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % settings.check_every:
            continue
        margin = float(reply_margins(logits.detach(), batch.labels).min())
        if log:
            log(f"step {step}: loss {loss.item():.4f}, smallest reply-token margin {margin:.2f}")
        if steps is None and margin > settings.margin:
            # those logits were the weights before this step's update: look again at the new ones
            model.eval()
            with torch.no_grad():
                logits = model(input_ids=batch.input_ids, **batch.kwargs).logits  # [B, T, V]
            if float(reply_margins(logits, batch.labels).min()) > settings.margin:
                bad = mismatches(model, tokenizer, config, examples)
                if not bad:
                    return step
                if log:
                    log(f"step {step}: greedy decoding still differs on {sorted(bad)}")
    model.eval()
    if steps is None:
        raise RuntimeError(f"the taught tiny model did not learn its replies in {limit} steps")
    return limit


def make_taught_tiny_model(
    *, steps: int | None = None, seed: int = 0, settings: TrainSettings = TrainSettings(), log=None
):
    """(model, tokenizer, steps taken): the tiny MoE Gemma 4 trained on TAUGHT_CONVERSATIONS.

    steps=None trains until transformers' greedy decoding reproduces every reply (raising past
    settings.max_steps); a fixed `steps` trains exactly that many steps and checks nothing."""
    from transformers import Gemma4ForConditionalGeneration

    tokenizer = make_tiny_tokenizer()
    config = tiny_config(tokenizer, "moe")
    examples = [encode(tokenizer, config, c) for c in TAUGHT_CONVERSATIONS]
    with _threads(settings.num_threads):
        torch.manual_seed(seed)  # HF's own init draws from the global generator
        model = Gemma4ForConditionalGeneration(config).to(torch.float32)
        perturb_(model, seed)
        taken = train(model, tokenizer, config, examples, steps=steps, settings=settings, log=log)
    return model, tokenizer, taken


def make_taught_tiny_checkpoint(out_dir: str | Path, *, steps: int | None = None, seed: int = 0, log=None) -> Path:
    """Train the taught tiny model and save it like make_tiny_checkpoint (float32 safetensors, tokenizer,
    chat template, generation_config.json with stops [<eos>, <turn|>, <|tool_response>]) plus taught.json."""
    start = time.perf_counter()
    model, tokenizer, taken = make_taught_tiny_model(steps=steps, seed=seed, log=log)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_tiny_tokenizer(tokenizer, out)
    model.save_pretrained(str(out), safe_serialization=True)
    if not (out / "chat_template.jinja").is_file():
        (out / "chat_template.jinja").write_text(tokenizer.chat_template or load_chat_template())
    bos, pad = tokenizer.convert_tokens_to_ids(["<bos>", "<pad>"])
    generation = dict(
        eos_token_id=stop_token_ids(tokenizer), bos_token_id=bos, pad_token_id=pad, **TAUGHT_GENERATION_DEFAULTS
    )
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    info = dict(
        steps=taken,
        seed=seed,
        verified=steps is None,
        seconds=round(time.perf_counter() - start, 1),
        weights_sha256=weights_digest(model),
        image_soft_tokens=TAUGHT_IMAGE_SOFT_TOKENS,
        conversations=[c["name"] for c in TAUGHT_CONVERSATIONS],
    )
    (out / "taught.json").write_text(json.dumps(info, indent=2) + "\n")
    if log:
        log(f"taught tiny model: {taken} steps, {info['seconds']} s")
    return out
