"""Gemma 4 output parsers for the OpenAI server: thought channel (reasoning) and tool calls."""

from server.parsers.output_parser import (
    STOP_TOKENS,
    Gemma4OutputParser,
    ParsedDelta,
    ParsedMessage,
    ToolCall,
    ToolCallDelta,
    parse_output,
)
from server.parsers.values import ValueSyntaxError, parse_value, to_gemma4_value

__all__ = [
    "STOP_TOKENS",
    "Gemma4OutputParser",
    "ParsedDelta",
    "ParsedMessage",
    "ToolCall",
    "ToolCallDelta",
    "ValueSyntaxError",
    "parse_output",
    "parse_value",
    "to_gemma4_value",
]
