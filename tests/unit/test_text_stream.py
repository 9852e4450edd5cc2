"""TextStream's stop strings, fed text in every split into deltas: the earliest stop string wins whichever
is listed first, a stop string is found across delta boundaries, exactly the longest tail that could
still grow into a stop string is held back (no more, no less), and include_stop_str keeps the stop."""

from __future__ import annotations

import pytest

from gemma_runtime.inputs.detokenizer import TextStream

TEXT = "say hello world, then END and more"


def splits(text: str):
    """Every split of text into two or three deltas (the cuts are where stop strings break across deltas)."""
    for i in range(1, len(text)):
        yield [text[:i], text[i:]]
        for j in range(i + 1, len(text), 5):
            yield [text[:i], text[i:j], text[j:]]


def feed(deltas: list[str], stop: tuple[str, ...], include: bool = False) -> tuple[str | None, str]:
    out = TextStream(stop, include_stop_str=include)
    released = []
    for d in deltas:
        hit = out.append(d)
        released.append(out.take_delta(final=hit is not None))
        if hit:
            return hit, "".join(released)
    released.append(out.take_delta(final=True))
    return None, "".join(released)


@pytest.mark.parametrize("stop", [("END", "hello"), ("hello", "END")])
def test_the_earliest_stop_string_wins_in_any_order_and_any_split(stop):
    for deltas in splits(TEXT):
        assert feed(deltas, stop) == ("hello", "say "), deltas


@pytest.mark.parametrize("include", [False, True])
def test_a_stop_string_across_deltas_is_found(include):
    for deltas in splits(TEXT):
        hit, text = feed(deltas, ("END",), include)
        assert hit == "END", deltas
        assert text == TEXT[: TEXT.find("END")] + ("END" if include else ""), deltas


def test_exactly_the_tail_that_could_become_a_stop_string_is_held_back():
    out = TextStream(("ENDING",), include_stop_str=False)
    for piece, released in [("go EN", "go "), ("DI", ""), ("x", "ENDIx"), ("ENDIN", "")]:
        assert out.append(piece) is None
        assert out.take_delta(final=False) == released, piece
    assert out.take_delta(final=True) == "ENDIN"  # the end: nothing can complete it any more
