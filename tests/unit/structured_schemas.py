"""Generated JSON schemas for the constrained-decoding tests: every one bounded (enums, const, integer
ranges, maxLength, maxItems), so an untrained model held to it must finish on its own.

Seeded composition of the features the issue lists: nested objects, bounded arrays, enums, const,
anyOf, integer ranges, bounded strings, required and optional fields, additionalProperties false.
"""

from __future__ import annotations

import random


def _leaf(rng: random.Random) -> dict:
    kind = rng.choice(["enum", "const", "int", "string", "bool", "null", "anyof"])
    if kind == "enum":
        return {"type": "string", "enum": rng.sample(["red", "green", "blue", "cyan", "amber"], rng.randint(1, 4))}
    if kind == "const":
        return {"const": rng.choice(["fixed", 7, True])}
    if kind == "int":
        lo = rng.randint(-50, 50)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 500)}
    if kind == "string":
        return {"type": "string", "minLength": rng.randint(0, 2), "maxLength": rng.randint(2, 8)}
    if kind == "bool":
        return {"type": "boolean"}
    if kind == "null":
        return {"type": "null"}
    return {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "string", "enum": ["none", "many"]}]}


def _value(rng: random.Random, depth: int) -> dict:
    roll = rng.random()
    if depth > 0 and roll < 0.25:
        return _object(rng, depth - 1)
    if depth > 0 and roll < 0.45:
        return {
            "type": "array",
            "items": _value(rng, depth - 1),
            "minItems": rng.randint(0, 1),
            "maxItems": rng.randint(1, 3),
        }
    return _leaf(rng)


def _object(rng: random.Random, depth: int) -> dict:
    names = rng.sample(
        ["id", "name", "color", "size", "tags", "meta", "count", "ok", "kind", "extra"], rng.randint(1, 4)
    )
    props = {n: _value(rng, depth) for n in names}
    required = [n for n in names if rng.random() < 0.6]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def generated_schemas(n: int = 32, seed: int = 15) -> list[dict]:
    rng = random.Random(seed)
    return [_object(rng, depth=2) for _ in range(n)]


def features(schemas: list[dict]) -> set[str]:
    """The schema features the list exercises (the test checks it covers them all)."""
    found: set[str] = set()

    def walk(s: dict) -> None:
        if s.get("type") == "object":
            found.add("object")
            found.update({"required"} if s.get("required") else set())
            found.update({"optional"} if set(s["properties"]) - set(s.get("required", ())) else set())
            if s.get("additionalProperties") is False:
                found.add("additionalProperties")
            for sub in s["properties"].values():
                if sub.get("type") == "object":
                    found.add("nested")
                walk(sub)
        elif s.get("type") == "array":
            found.add("array")
            walk(s["items"])
        for key, name in (
            ("enum", "enum"),
            ("const", "const"),
            ("anyOf", "anyOf"),
            ("maxLength", "string"),
            ("minimum", "integer"),
        ):
            if key in s:
                found.add(name)

    for schema in schemas:
        walk(schema)
    return found


ALL_FEATURES = {
    "object",
    "nested",
    "array",
    "enum",
    "const",
    "anyOf",
    "integer",
    "string",
    "required",
    "optional",
    "additionalProperties",
}
