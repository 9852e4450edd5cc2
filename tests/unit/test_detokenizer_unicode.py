"""Streaming non-ASCII text token by token through the real (byte-level BPE) tiny tokenizer: accents,
CJK and emoji split into byte tokens, so a character spans several tokens. Every delta must hold whole
characters only (never U+FFFD for a character still being completed), and the deltas joined must equal
the full decode, with and without stop strings in play.
"""

from __future__ import annotations

import pytest

from engine_builder.tiny.tokenizer import make_tiny_tokenizer
from gemma_runtime.inputs.detokenizer import IncrementalDetokenizer, TextStream

TEXTS = [
    "café",
    "Un café crème, s'il vous plaît: déjà vu à Noël.",
    "日本語のテキストです。",
    "emoji 🙂 and 👍🏽 and 🇫🇷 flags",
    "mixed: naïve 東京 🚀 résumé",
    "Ωμέγα — “quotes” … end",
]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def stream(tokenizer, prompt: str, ids: list[int]) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, encode(tokenizer, prompt), skip_special_tokens=True)
    return [detok.add(i) for i in ids] + [detok.flush()]


def test_the_texts_really_split_characters_across_tokens(tokenizer):
    """The premise: some token of each text is a lone piece of a multi-byte character."""
    for text in TEXTS:
        ids = encode(tokenizer, text)
        assert any("\ufffd" in tokenizer.decode([i]) for i in ids), text


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("prompt", ["Hello there.", "Réponds en français: ", "<|turn>model\n"])
def test_deltas_are_whole_characters_and_join_to_the_decode(tokenizer, text, prompt):
    ids = encode(tokenizer, text)
    deltas = stream(tokenizer, prompt, ids)
    assert not any("\ufffd" in d for d in deltas), deltas
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert deltas[-1] == ""  # nothing was left held back once the last byte arrived


def test_a_character_is_released_by_the_token_that_completes_it(tokenizer):
    ids = encode(tokenizer, "café")
    deltas = stream(tokenizer, "Hi", ids)
    # "é" is two bytes: the token holding its first byte emits nothing, the next emits the character.
    first_e = next(i for i, t in enumerate(ids) if "\ufffd" in tokenizer.decode([t]))
    assert deltas[first_e] == "" and deltas[first_e + 1].endswith("é")


def test_an_unfinished_character_at_the_end_comes_out_on_flush(tokenizer):
    """A stream cut mid-character (max_tokens) still gives back what it decoded, as the full decode does."""
    ids = encode(tokenizer, "café")
    cut = ids[: next(i for i, t in enumerate(ids) if "\ufffd" in tokenizer.decode([t])) + 1]
    deltas = stream(tokenizer, "Hi", cut)
    assert "".join(deltas) == tokenizer.decode(cut)
    assert not any("\ufffd" in d for d in deltas[:-1])


@pytest.mark.parametrize("stop", ["東京", "🚀", "é"])
def test_stop_strings_of_multibyte_characters(tokenizer, stop):
    text = "mixed: naïve 東京 🚀 résumé"
    detok = IncrementalDetokenizer(tokenizer, encode(tokenizer, "Hi"), skip_special_tokens=True)
    out = TextStream((stop,), include_stop_str=False)
    deltas, hit = [], None
    for i in encode(tokenizer, text):
        hit = out.append(detok.add(i))
        deltas.append(out.take_delta(final=hit is not None))
        if hit:
            break
    assert hit == stop
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) == text[: text.find(stop)]
