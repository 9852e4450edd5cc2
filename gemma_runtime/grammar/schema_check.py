"""Which JSON-schema keywords a constrained reply can promise, and a walk that refuses the others.

A keyword the grammar cannot enforce must never be dropped quietly (the reply would claim to follow a
schema it may break), so anything outside the allow-list raises `UnsupportedSchema` naming the keyword
and where it sits; the server turns that into a 400. Annotations (title, description...) constrain
nothing and are always allowed.
"""

from __future__ import annotations

from collections.abc import Iterator

ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly"}
)
# keyword -> how its value holds subschemas: "schema", "schemas" (a list), "map" (name -> schema), None
ENFORCED = {
    "type": None,
    "enum": None,
    "const": None,
    "properties": "map",
    "required": None,
    "additionalProperties": "schema_or_bool",
    "items": "schema_or_bool",
    "prefixItems": "schemas",
    "minItems": None,
    "maxItems": None,
    "anyOf": "schemas",
    "oneOf": "schemas",
    "minimum": None,
    "maximum": None,
    "exclusiveMinimum": None,
    "exclusiveMaximum": None,
    "minLength": None,
    "maxLength": None,
    "pattern": None,
    "format": None,
    "$ref": None,
    "$defs": "map",
    "definitions": "map",
}
FORMATS = frozenset({"date", "time", "date-time", "email", "uuid", "ipv4", "ipv6", "uri", "hostname", "duration"})
TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})


class UnsupportedSchema(ValueError):
    """A schema feature constrained decoding cannot enforce; the message names it."""


def check_schema(schema, where: str = "#", allowed: dict | None = None) -> None:
    """Raises UnsupportedSchema for the first keyword (or keyword value) outside `allowed`."""
    allowed = ENFORCED if allowed is None else allowed
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"the schema at {where} must be an object, not {type(schema).__name__}")
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        if key not in allowed:
            raise UnsupportedSchema(
                f"the JSON schema keyword {key!r} (at {where}) is not supported by constrained decoding"
            )
        _check_value(key, value, where)
        for sub_where, sub in _subschemas(allowed[key], value, f"{where}/{key}"):
            check_schema(sub, sub_where, allowed)


def _check_value(key: str, value, where: str) -> None:
    if key == "type":
        names = value if isinstance(value, list) else [value]
        bad = [n for n in names if n not in TYPES]
        if bad:
            raise UnsupportedSchema(f"the JSON schema type {bad[0]!r} (at {where}) is not supported")
    elif key == "format" and value not in FORMATS:
        raise UnsupportedSchema(f"the JSON schema format {value!r} (at {where}) is not supported")
    elif key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
        raise UnsupportedSchema(
            f"the JSON schema $ref {value!r} (at {where}) is not supported: only local references ('#/...')"
        )


def _subschemas(holds, value, where: str) -> Iterator[tuple[str, object]]:
    if holds in ("schema", "schema_or_bool") and isinstance(value, (dict, bool)):
        yield where, value
    elif holds == "schemas" and isinstance(value, list):
        yield from ((f"{where}/{i}", s) for i, s in enumerate(value))
    elif holds == "map" and isinstance(value, dict):
        yield from ((f"{where}/{k}", s) for k, s in value.items())
