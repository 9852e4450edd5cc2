"""A tiny Gemma-4-shaped tokenizer for tests and the demo engine.

Byte-level BPE (so any Unicode string round-trips) trained on a small built-in corpus, carrying every
Gemma 4 control string as one special token and the project's chat template. Ids differ from the real
Gemma 4 vocabulary on purpose: callers must look special tokens up with `convert_tokens_to_ids`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# A model built for this tokenizer needs vocab_size >= TINY_VOCAB_SIZE.
TINY_VOCAB_SIZE = 512

CHAT_TEMPLATE_PATH = Path(__file__).parent.parent / "assets" / "chat_template.jinja"

# <pad>/<eos>/<bos> keep Gemma's ids 0/1/2 (and Gemma 3's unk/mask 3/4); the rest follow in order.
BASE_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
CONTROL_TOKENS = (
    "<|turn>",
    "<turn|>",
    "<|think|>",
    "<|channel>",
    "<channel|>",
    "<|tool>",
    "<tool|>",
    "<|tool_call>",
    "<tool_call|>",
    "<|tool_response>",
    "<tool_response|>",
    '<|"|>',
    "<|image>",
    "<image|>",
    "<|image|>",
    "<|audio>",
    "<audio|>",
    "<|audio|>",
    "<|video|>",
)
SPECIAL_TOKENS = BASE_SPECIAL_TOKENS + CONTROL_TOKENS

# Training text: ordinary English plus the words chat, tool-calling and reasoning prompts use, so the
# tiny models in tests see short prompts. Kept inline so the build needs no data download.
_CORPUS = (
    "You are a helpful assistant. Answer the user's question clearly and briefly.",
    "Hello! How are you today? I am fine, thank you. What can I do for you?",
    "The quick brown fox jumps over the lazy dog. The dog was not amused.",
    "What is the weather like in Paris today? It is sunny and warm, about 21 degrees.",
    "Get the current weather for a city. The location is the city name, for example London.",
    "The unit of temperature is celsius or fahrenheit. The number of days to forecast is an integer.",
    "Let me think step by step. First, I need to find the answer. Then I will check it.",
    "The user is asking about the capital of France. The capital of France is Paris.",
    "I should call the tool to search for the information, then summarise the result.",
    "Describe this image. The picture shows a red car parked in front of a small house.",
    "Please write a short story about a robot who learns to paint in the city.",
    "Calculate the sum of two numbers. The result of the function is returned as a string.",
    "Translate the following sentence into French: the weather is nice this morning.",
    "Thanks for your help! You are welcome. Is there anything else I can help with?",
    "The model reads the prompt, generates tokens one at a time, and stops at the end of the turn.",
    "function name description parameters properties required type string number boolean array object",
    "user model system developer assistant tool response call declaration value result error",
    "Once upon a time there was a little girl who lived in a village near the forest.",
    "In the morning the sun rises in the east, and in the evening it sets in the west.",
    "This is a test. Testing one, two, three. The answer is 42 and the time is 10:30.",
    "If the list is empty, return None. Otherwise return the first item of the list.",
    "We can solve this problem by breaking it into smaller parts and solving each part.",
)


def _train() -> Tokenizer:
    # No normalizer: byte-level pre-tokenization keeps every byte, so decode(encode(s)) == s.
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeating the corpus changes no merge order but lifts every real pair above min_frequency.
    tokenizer.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    # Like Gemma: add_special_tokens=True prepends <bos>; the chat template writes its own <bos>.
    bos_id = tokenizer.token_to_id("<bos>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos>:1 $B:1", special_tokens=[("<bos>", bos_id)]
    )
    return tokenizer


def load_chat_template() -> str:
    """The project's Gemma 4 chat template source."""
    return CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")


def make_tiny_tokenizer(out_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Build the tiny tokenizer; when out_dir is given, also save_pretrained it there."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train(),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
        chat_template=load_chat_template(),
    )
    assert len(tokenizer) <= TINY_VOCAB_SIZE, len(tokenizer)
    if out_dir is not None:
        save_tiny_tokenizer(tokenizer, out_dir)
    return tokenizer


def save_tiny_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    # transformers 5 no longer writes special_tokens_map.json; older loaders and other runtimes read it.
    names = ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")
    special_map = {name: getattr(tokenizer, name) for name in names}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, sort_keys=True) + "\n")
