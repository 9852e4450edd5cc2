"""JSON schema -> grammar rules for Gemma 4 values (the syntax of tool-call arguments).

Handled: type (one or a list), enum, const, anyOf/oneOf, objects (properties in declared order, each
optional one may be left out; no extra keys are ever generated, which satisfies
`additionalProperties: false` and its absence alike), arrays (items, minItems, maxItems), strings
(minLength, maxLength), integers (no bounds, a lower bound of 0 or 1, or a range of at most
MAX_INT_RANGE values, listed), numbers without bounds, booleans, null. Anything else raises
UnsupportedSchema naming the keyword. No whitespace is generated anywhere.
"""

from __future__ import annotations

import json

from gemma_runtime.grammar.schema_check import ANNOTATIONS, UnsupportedSchema

STRING_DELIM = '"<|\\"|>"'  # the one-token string delimiter <|"|>, as an EBNF literal
CALL_OPEN = '"<|tool_call>"'
CALL_CLOSE = '"<tool_call|>"'
MAX_INT_RANGE = 1000
_HANDLED = frozenset(
    {
        "type",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
    }
)
_STRING_CHAR = r"[^<\x00-\x1f]"  # `<` could begin the delimiter token's text: kept out of strings


def literal(text: str) -> str:
    return json.dumps(text)  # an EBNF string literal uses JSON's escapes


class RuleWriter:
    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._count = 0

    def add(self, name: str, body: str) -> str:
        self.rules[name] = body
        return name

    def new(self, body: str) -> str:
        self._count += 1
        return self.add(f"r{self._count}", body)

    def text(self) -> str:
        order = ["root"] + [n for n in self.rules if n != "root"]
        return "\n".join(f"{n} ::= {self.rules[n]}" for n in order) + "\n"

    # values --------------------------------------------------------------------------------------
    def value(self, schema, where: str, object_only: bool = False) -> str:
        if schema is True or schema == {}:
            return self._any_object() if object_only else self._any_value()
        if not isinstance(schema, dict):
            raise UnsupportedSchema(f"the schema at {where} must be an object")
        for key in schema:
            if key not in _HANDLED and key not in ANNOTATIONS:
                raise UnsupportedSchema(
                    f"the JSON schema keyword {key!r} (at {where}) is not supported in tool parameters"
                )
        if "const" in schema:
            return self.new(self._constant(schema["const"], where))
        if "enum" in schema:
            return self.new(" | ".join(self._constant(v, where) for v in schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.new(" | ".join(self.value(s, f"{where}/{key}/{i}") for i, s in enumerate(schema[key])))
        types = schema.get("type")
        if types is None:
            types = "object" if "properties" in schema else None
        if types is None:
            return self._any_object() if object_only else self._any_value()
        types = types if isinstance(types, list) else [types]
        if object_only and types != ["object"]:
            raise UnsupportedSchema(f"tool parameters at {where} must be an object schema")
        return self.new(" | ".join(self._typed(t, schema, where) for t in types))

    def _typed(self, kind: str, schema: dict, where: str) -> str:
        if kind == "object":
            return f'"{{" {self.object_inner(schema, where)} "}}"'
        if kind == "array":
            return self._array(schema, where)
        if kind == "string":
            lo, hi = schema.get("minLength", 0), schema.get("maxLength")
            reps = f"{{{lo},{hi}}}" if hi is not None else (f"{{{lo},}}" if lo else "*")
            return f"{STRING_DELIM} {_STRING_CHAR}{reps} {STRING_DELIM}"
        if kind == "integer":
            return self._integer(schema, where)
        if kind == "number":
            if "minimum" in schema or "maximum" in schema:
                raise UnsupportedSchema(f"bounds on a number (at {where}) are not supported in tool parameters")
            return '"-"? ( "0" | [1-9] [0-9]* ) ( "." [0-9]+ )?'
        if kind == "boolean":
            return '"true" | "false"'
        if kind == "null":
            return '"null"'
        raise UnsupportedSchema(f"the JSON schema type {kind!r} (at {where}) is not supported")

    def object_inner(self, schema: dict, where: str) -> str:
        """The members between the braces: required keys in order, each optional one may be skipped."""
        props = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        missing = required - set(props)
        if missing:
            raise UnsupportedSchema(f"required property {sorted(missing)[0]!r} (at {where}) has no schema")
        members = [
            (f'{literal(k)} ":" {self.value(s, f"{where}/properties/{k}")}', k in required) for k, s in props.items()
        ]
        # T_i: members i.. written after some earlier member (each with its comma); member i is followed by T_(i+1)
        follows, tail = [], '""'
        for member, req in reversed(members):
            follows.append(tail)
            tail = self.new(f'"," {member} {tail}' if req else f'( "," {member} )? {tail}')
        follows.reverse()
        # the first member written is member i: every earlier one was optional and skipped
        options = []
        for i, (member, req) in enumerate(members):
            options.append(f"{member} {follows[i]}")
            if req:
                break
        else:
            options.append('""')
        return self.new(" | ".join(options) if options else '""')

    def _array(self, schema: dict, where: str) -> str:
        item = self.value(schema.get("items", True), f"{where}/items")
        lo, hi = schema.get("minItems", 0), schema.get("maxItems")
        if hi == 0:
            return '"[" "]"'
        more_hi = "" if hi is None else str(hi - 1)
        more = f'( "," {item} ){{{max(lo - 1, 0)},{more_hi}}}'
        body = f"{item} {more}"
        return f'"[" {body} "]"' if lo > 0 else f'"[" ( {body} )? "]"'

    def _integer(self, schema: dict, where: str) -> str:
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if lo is not None and hi is not None:
            lo, hi = int(-(-lo // 1)), int(hi // 1)
            if hi - lo + 1 > MAX_INT_RANGE:
                raise UnsupportedSchema(
                    f"an integer range wider than {MAX_INT_RANGE} values (at {where}) is not supported in tool parameters"
                )
            return " | ".join(literal(str(n)) for n in sorted(range(lo, hi + 1), key=lambda n: -len(str(n))))
        if hi is not None:
            raise UnsupportedSchema(
                f"an integer maximum without a minimum (at {where}) is not supported in tool parameters"
            )
        if lo is None:
            return '"-"? ( "0" | [1-9] [0-9]* )'
        if lo == 0:
            return '"0" | [1-9] [0-9]*'
        if lo == 1:
            return "[1-9] [0-9]*"
        raise UnsupportedSchema(
            f"an integer minimum other than 0 or 1 without a maximum (at {where}) is not supported in tool parameters"
        )

    def _constant(self, value, where: str) -> str:
        if isinstance(value, str):
            if "<" in value:
                raise UnsupportedSchema(
                    f"a string constant containing '<' (at {where}) is not supported in tool parameters"
                )
            return f"{STRING_DELIM} {literal(value)} {STRING_DELIM}" if value else f"{STRING_DELIM} {STRING_DELIM}"
        if isinstance(value, bool) or value is None:
            return literal(json.dumps(value))
        if isinstance(value, (int, float)):
            return literal(json.dumps(value))
        raise UnsupportedSchema(
            f"enum or const values that are objects or arrays (at {where}) are not supported in tool parameters"
        )

    # schemaless values ---------------------------------------------------------------------------
    def _any_value(self) -> str:
        if "any_value" not in self.rules:
            self.add(
                "any_value",
                " | ".join(
                    [
                        f"{STRING_DELIM} {_STRING_CHAR}* {STRING_DELIM}",
                        '"-"? [0-9]+ ( "." [0-9]+ )?',
                        '"true"',
                        '"false"',
                        '"null"',
                        "any_object",
                        '"[" ( any_value ( "," any_value )* )? "]"',
                    ]
                ),
            )
            self._any_object()
        return "any_value"

    def _any_object(self) -> str:
        if "any_object" not in self.rules:
            self.add("any_object", '"{" ( any_key ":" any_value ( "," any_key ":" any_value )* )? "}"')
            self.add("any_key", "[a-zA-Z_] [a-zA-Z0-9_]*")
            self._any_value()
        return "any_object"
