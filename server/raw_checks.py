"""Checks on a request body as parsed JSON, before pydantic coerces it.

Two client mistakes that pydantic's lax mode lets through and that later fail deep in the server (a 500):
a boolean where a number belongs (`"temperature": true` would become 1.0) and a string holding a lone
UTF-16 surrogate (`"\\ud800"` is valid JSON but not encodable as UTF-8, so the tokenizer raises).
Both become 400s here, at the boundary. No imports from the server: protocol.py calls these.
"""

from __future__ import annotations


def _has_lone_surrogate(text: str) -> bool:
    """Any code point in U+D800..U+DFFF in a Python str is a lone surrogate (json.loads pairs valid ones),
    and exactly those make a strict UTF-8 encode fail. `isascii` is O(1) (a flag CPython keeps), so the
    common ASCII prompt costs nothing; a regex scan took 2 s on a 30 MB prompt, the encode a third of it."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def reject_bool_numbers(data, names: tuple[str, ...]) -> None:
    """`names` are numeric fields: a JSON true/false there is a mistake, not 1 or 0."""
    if not isinstance(data, dict):
        return
    for name in names:
        if isinstance(data.get(name), bool):
            raise ValueError(f"`{name}` must be a number, not a boolean")


def reject_lone_surrogates(data) -> None:
    """Walks the parsed body (iteratively: nesting depth is the JSON parser's to bound) and refuses any
    string, key or value, that holds a lone surrogate."""
    stack = [(data, "body")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if _has_lone_surrogate(value):
                raise ValueError(f"{where} holds a lone UTF-16 surrogate (not valid Unicode text)")
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and _has_lone_surrogate(key):
                    raise ValueError(f"a key in {where} holds a lone UTF-16 surrogate (not valid Unicode text)")
                stack.append((item, f"{where}.{key}" if where != "body" else str(key)))
        elif isinstance(value, list):
            stack.extend((item, f"{where}.{i}") for i, item in enumerate(value))
