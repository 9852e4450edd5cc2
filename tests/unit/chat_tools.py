"""The tool definitions the chat corpus (chat_corpus.py) and the chat-template tests declare: ordinary
function tools, and the schema corners real clients send."""

from __future__ import annotations

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["location"],
        },
    },
}

TIME_TOOL = {"type": "function", "function": {"name": "get_time", "description": "The current UTC time"}}

FLIGHTS_TOOL = {
    "type": "function",
    "function": {
        "name": "search_flights",
        "description": "Search flights between two airports.",
        "parameters": {
            "type": "object",
            "properties": {
                "origin": {"type": "string", "description": "IATA code of the departure airport"},
                "destination": {"type": "string", "description": "IATA code of the arrival airport"},
                "passengers": {
                    "type": "array",
                    "description": "Who travels",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "age": {"type": "integer", "description": "Age in years"},
                            "seat": {"type": "string", "enum": ["aisle", "window", "middle"]},
                        },
                        "required": ["name"],
                    },
                },
                "filters": {
                    "type": "object",
                    "description": "Optional filters",
                    "properties": {
                        "max_price": {"type": "number", "description": "In euros"},
                        "airlines": {"type": "array", "items": {"type": "string"}},
                        "nonstop": {"type": "boolean", "nullable": True},
                    },
                    "required": ["max_price"],
                },
                "flexible": {"type": "boolean", "nullable": True, "description": "Dates may move"},
            },
            "required": ["origin", "destination", "passengers"],
        },
        "response": {"type": "object", "description": "Matching flights"},
    },
}

CALCULATOR_TOOL = {
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "For example 2*(3+4)"}},
            "required": ["expression"],
        },
    },
}

# Schema corners that real clients send: type lists, free-form objects, arrays of arrays, item enums,
# a property literally named "type", a parameters object without "type", a non-object response.
ODD_SCHEMA_TOOL = {
    "type": "function",
    "function": {
        "name": "odd_schema",
        "description": "Exercises rare JSON-schema shapes.",
        "parameters": {
            "type": "object",
            "properties": {
                "maybe_text": {"type": ["string", "null"], "description": "A union type"},
                "config": {"type": "object", "description": "Free-form", "additionalProperties": False},
                "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                "tags": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["a", "b"], "description": "One tag"},
                },
                "type": {"type": "string", "description": "Shadowed by the schema keyword"},
                "Zeta": {"type": "STRING"},
                "alpha": {"type": "Integer", "enum": [1, 2]},
                "union_items": {"type": "array", "items": {"type": ["string", "integer"]}},
                "null_in_items": {"type": "array", "items": {"type": "string", "format": None}},
            },
            "required": ["matrix"],
        },
    },
}

UNTYPED_PARAMS_TOOL = {
    "type": "function",
    "function": {
        "name": "untyped",
        "description": "Parameters without a type, and a string response.",
        "parameters": {"properties": {"q": {"type": "string"}}, "required": ["q"]},
        "response": {"type": "string", "description": "Plain text"},
    },
}
