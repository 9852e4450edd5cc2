"""StructuredOutput -> a fresh GrammarState, through xgrammar.

xgrammar (not llguidance) because its CPU wheels install beside our torch without pulling another one,
its JSON-schema converter bounds whitespace (we ask for none: compact JSON, so an untrained model under
a bounded schema must finish), and its compiled grammars are cached, so the same schema is compiled once.
Compilation runs in the engine's prepare pool (`LLMEngine.prepare`), never on the engine-loop thread.
Each kind of `StructuredOutput` is one entry of `COMPILERS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import xgrammar as xgr

from gemma_runtime.grammar.schema_check import UnsupportedSchema, check_schema
from gemma_runtime.grammar.spec import StructuredOutput
from gemma_runtime.grammar.state import GrammarState, ThoughtTokens
from gemma_runtime.grammar.tool_calls import tool_call_grammar, tool_call_structural_tag

# xgrammar 0.2.8 writes the characters of a length-bounded string as [^"\\\r\n]: raw control characters
# pass (invalid JSON) and escapes cannot. Its unbounded strings use the right class; so do we.
_BOUNDED_STRING_CHAR = r"[^\"\\\r\n]"
_JSON_STRING_CHAR = r"[^\0-\x1f\"\\]"


def _json_schema(compiler: xgr.GrammarCompiler, source: str) -> xgr.CompiledGrammar:
    try:
        schema = json.loads(source)
    except json.JSONDecodeError as e:
        raise UnsupportedSchema(f"the JSON schema is not valid JSON: {e}") from None
    check_schema(schema)
    ebnf = str(xgr.Grammar.from_json_schema(source, any_whitespace=False, strict_mode=True))
    return compiler.compile_grammar(ebnf.replace(_BOUNDED_STRING_CHAR, _JSON_STRING_CHAR))


def _json_object(compiler: xgr.GrammarCompiler, source: str) -> xgr.CompiledGrammar:
    return compiler.compile_json_schema({"type": "object"}, any_whitespace=False, strict_mode=False)


def _tool_calls(compiler: xgr.GrammarCompiler, source: str) -> xgr.CompiledGrammar:
    parsed = json.loads(source)
    if parsed["choice"] == "auto":
        return compiler.compile_structural_tag(json.dumps(tool_call_structural_tag(parsed)))
    return compiler.compile_grammar(tool_call_grammar(parsed))


COMPILERS: dict[str, Callable[[xgr.GrammarCompiler, str], xgr.CompiledGrammar]] = {
    "json_schema": _json_schema,
    "json_object": _json_object,
    "tool_calls": _tool_calls,
}


class GrammarCompiler:
    """One per engine: the tokenizer's vocabulary as xgrammar sees it, and a compile cache."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids, max_threads: int = 2):
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids)
        )
        self.compiler = xgr.GrammarCompiler(info, max_threads=max_threads)
        self.thought = ThoughtTokens(
            tokenizer.convert_tokens_to_ids("<|channel>"), tokenizer.convert_tokens_to_ids("<channel|>")
        )

    def compile(self, spec: StructuredOutput) -> xgr.CompiledGrammar:
        """Raises UnsupportedSchema (a 400 upstream) for what cannot be enforced."""
        compile_kind = COMPILERS.get(spec.kind)
        if compile_kind is None:
            raise UnsupportedSchema(
                f"structured output kind {spec.kind!r} is not supported (one of {sorted(COMPILERS)})"
            )
        try:
            return compile_kind(self.compiler, spec.source)
        except UnsupportedSchema:
            raise
        except (RuntimeError, ValueError) as e:  # xgrammar's own refusals name the feature too
            raise UnsupportedSchema(f"the grammar cannot be built: {e}") from None

    def new_state(self, spec: StructuredOutput, compiled: xgr.CompiledGrammar) -> GrammarState:
        return GrammarState(xgr.GrammarMatcher(compiled), spec.thought, self.thought)
