"""The mutation run's list: small, plausible bugs (file, old snippet, new snippet) in the sampler, scheduler,
block manager, detokenizer, engine stop checks, parsers and server, each with the tests that should catch
it. The seven bugs of issue 20 are marked `issue20`. Each old snippet must occur exactly once in its file
(tests/unit/test_mutation_list.py checks it), so a refactor that moves code shows up as a broken list, not
as mutants that silently stop applying.

`tests` is the first tier: the smallest set of fast test files that should catch the mutant, cheapest and
likeliest first (the run stops at the first failure). `broader` runs only when the first tier lets the
mutant through: the slower suite (parity against transformers) that would otherwise be its only catcher.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # first tier: test files (relative to the repo root) that should catch it
    issue20: bool = False  # one of the seven bugs the suite let through
    broader: tuple[str, ...] = ()  # second tier, run only on a survivor of the first
    timeout: float | None = None  # seconds per tier, where the run's default is too short (e2e)


U = "tests/unit/"
PARITY = ("tests/parity/test_text_parity.py",)
SAMPLER_TESTS = (U + "test_sampler_support.py", U + "test_sampler.py")
SCHEDULER_TESTS = (U + "test_scheduler_budget.py", U + "test_scheduler_preemption.py", U + "test_engine_outputs.py")
BLOCK_TESTS = (
    U + "test_block_manager_window.py",
    U + "test_block_manager.py",
    U + "test_device_block_tables.py",
    U + "test_engine_outputs.py",
)
DETOK_TESTS = (U + "test_detokenizer_unicode.py", U + "test_text_stream.py", U + "test_engine_outputs.py")
ENGINE_TESTS = (U + "test_min_tokens_boundary.py", U + "test_engine_outputs.py", U + "test_overlap_and_graphs.py")
# the parsers' own tests, then the HTTP layer that streams through them
PARSER_TESTS = (
    U + "test_parsers.py",
    U + "test_parsers_streaming.py",
    U + "test_parsers_tool_calls.py",
    U + "test_server_http.py",
)
OUTCOME_TESTS = (U + "test_server_outcomes.py", U + "test_server_http.py", U + "test_server_template.py")
FP8_TESTS = (U + "test_fp8_scales.py", U + "test_fp8.py")
TRITON_TESTS = ("tests/e2e/test_triton_cleanup.py",)

S, SC = "gemma_runtime/executor/sampler.py", "gemma_runtime/scheduling/scheduler.py"
BM, DT = "gemma_runtime/scheduling/block_manager.py", "gemma_runtime/inputs/detokenizer.py"
ENG, LEX, OUT = "gemma_runtime/engine/llm_engine.py", "server/parsers/lexer.py", "server/parsers/output_parser.py"

_CORE: tuple[Mutation, ...] = (
    # -- sampler ------------------------------------------------------------------------------------
    Mutation(
        "top_k keeps k-1",
        S,
        "logits.masked_fill(logits < kth, neg_inf)",
        "logits.masked_fill(logits <= kth, neg_inf)",
        SAMPLER_TESTS,
        broader=PARITY,
        issue20=True,
    ),
    Mutation(
        "presence scaled by count",
        S,
        "presence * (counts > 0).to(logits.dtype)",
        "presence * counts",
        SAMPLER_TESTS,
        broader=PARITY,
        issue20=True,
    ),
    Mutation(
        "min_p absolute",
        S,
        "probs < min_p * probs.amax(dim=-1, keepdim=True)",
        "probs < min_p",
        SAMPLER_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "top_p drops the crossing token",
        S,
        "(torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= top_p",
        "torch.cumsum(sorted_probs, dim=-1) >= top_p",
        SAMPLER_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "temperature inverted",
        S,
        "_filter(logits / temperature, rows)",
        "_filter(logits * temperature, rows)",
        SAMPLER_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "frequency penalty sign",
        S,
        "logits[index] -= frequency",
        "logits[index] += frequency",
        SAMPLER_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "logprobs after penalties",
        S,
        "out.chosen_logprobs = raw_logprobs.gather(",
        "out.chosen_logprobs = torch.log_softmax(logits, dim=-1).gather(",
        SAMPLER_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "seeded rows share the default generator",
        S,
        "row.generator is not None and row.generator is not default",
        "row.generator is not None and row.generator is default",
        SAMPLER_TESTS,
        broader=PARITY,
    ),
    # -- scheduler ----------------------------------------------------------------------------------
    Mutation(
        "prefill chunk one over the budget",
        SC,
        "end = min(seq.num_tokens, start + budget)",
        "end = min(seq.num_tokens, start + budget + 1)",
        SCHEDULER_TESTS,
        broader=PARITY,
        issue20=True,
    ),
    Mutation(
        "chunk may end inside an image",
        SC,
        "end = span.start if span.start > start else span.end",
        "end = span.end if span.start > start else span.start",
        SCHEDULER_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "sequence cap off by one",
        SC,
        "len(self.running) < self.max_num_seqs",
        "len(self.running) <= self.max_num_seqs",
        SCHEDULER_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "waiting prefill not charged",
        SC,
        "            scheduled.append(ScheduledSeq(seq, num_new))\n            budget -= num_new\n        return",
        "            scheduled.append(ScheduledSeq(seq, num_new))\n            budget -= 1\n        return",
        SCHEDULER_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "preempted sequence keeps its progress",
        SC,
        "        seq.num_computed = 0\n        seq.num_preemptions += 1\n",
        "        seq.num_preemptions += 1\n",
        SCHEDULER_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "running chunk not charged to the budget",
        SC,
        "                budget -= num_new_total\n                i += 1\n",
        "                i += 1\n",
        SCHEDULER_TESTS,
        broader=PARITY,
    ),
    # -- block manager ------------------------------------------------------------------------------
    Mutation(
        "sliding page reclaimed one token early",
        BM,
        "first_query_pos - self.window + 1",
        "first_query_pos - self.window + 2",
        BLOCK_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "sliding page reclaimed one page late",
        BM,
        "range(tables.sliding_reclaimed, min(first, len(tables.sliding)))",
        "range(tables.sliding_reclaimed, min(first - 1, len(tables.sliding)))",
        BLOCK_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "can_allocate ignores reclaimable pages",
        BM,
        "sliding <= self.sliding.num_free + reclaimable",
        "sliding <= self.sliding.num_free",
        BLOCK_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "free keeps the reclaimed index",
        BM,
        "        tables.sliding_reclaimed = 0\n",
        "",
        BLOCK_TESTS,
        broader=PARITY,
    ),
    # -- detokenizer and stop strings ---------------------------------------------------------------
    Mutation(
        "partial UTF-8 streamed early",
        DT,
        'len(new_text) > len(prefix_text) and not new_text.endswith("\\ufffd")',
        "len(new_text) > len(prefix_text)",
        DETOK_TESTS,
        broader=PARITY,
        issue20=True,
    ),
    Mutation(
        "stop prefix held back one short",
        DT,
        "range(min(len(s) - 1, len(self.text)), longest, -1)",
        "range(min(len(s) - 2, len(self.text)), longest, -1)",
        DETOK_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "stop search only in the new delta",
        DT,
        "search_from = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))",
        "search_from = len(self.text)",
        DETOK_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "include_stop_str inverted",
        DT,
        "(len(s) if self.include_stop_str else 0)",
        "(0 if self.include_stop_str else len(s))",
        DETOK_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "held-back bytes dropped at the end",
        ENG,
        "                state.text.append(state.detokenizer.flush())\n",
        "                pass\n",
        DETOK_TESTS,
        broader=PARITY,
    ),
    Mutation(
        "the later of two stop strings wins",
        DT,
        "idx < hit[0]",
        "idx > hit[0]",
        DETOK_TESTS,
        broader=PARITY,
    ),
    # -- engine stop checks -------------------------------------------------------------------------
    Mutation(
        "min_tokens off by one for stop tokens",
        ENG,
        "token in seq.stop_token_ids and n_out > p.min_tokens",
        "token in seq.stop_token_ids and n_out >= p.min_tokens",
        ENGINE_TESTS,
        broader=PARITY,
        issue20=True,
    ),
    Mutation(
        "max_tokens off by one",
        ENG,
        "elif n_out >= p.max_tokens",
        "elif n_out > p.max_tokens",
        (U + "test_engine_outputs.py", U + "test_min_tokens_boundary.py", U + "test_overlap_and_graphs.py"),
        broader=PARITY,
    ),
    # -- parsers and server -------------------------------------------------------------------------
    Mutation(
        "tool_calls beats length",
        "server/chat.py",
        '    if engine_reason == "length":\n        return "length"  # kept even mid tool call, so a client can tell a truncated call\n'
        '    if has_calls and mode in ("auto", "required"):\n        return "tool_calls"\n',
        '    if has_calls and mode in ("auto", "required"):\n        return "tool_calls"\n'
        '    if engine_reason == "length":\n        return "length"\n',
        OUTCOME_TESTS,
        issue20=True,
    ),
    Mutation(
        "reasoning_effort low turns thinking off",
        "server/protocol.py",
        'self.reasoning_effort != "none"',
        'self.reasoning_effort not in ("none", "low")',
        OUTCOME_TESTS,
        issue20=True,
    ),
    Mutation(
        "lexer never holds the longest prefix",
        LEX,
        "len(buf) - pos < self._max_len and",
        "len(buf) - pos < self._max_len - 1 and",
        PARSER_TESTS,
    ),
    Mutation(
        "thought label without its newline first",
        "server/parsers/reasoning.py",
        "for label in (THOUGHT_LABEL, _LABEL_WORD):",
        "for label in (_LABEL_WORD, THOUGHT_LABEL):",
        PARSER_TESTS,
    ),
    Mutation(
        "every call gets index 0",
        OUT,
        "ToolCallDelta(self._num_calls, self._new_id()",
        "ToolCallDelta(0, self._new_id()",
        PARSER_TESTS,
    ),
    Mutation(
        "arguments escaped to ASCII",
        "server/parsers/tool_calls.py",
        "json.dumps(args, ensure_ascii=False)",
        "json.dumps(args, ensure_ascii=True)",
        PARSER_TESTS,
    ),
    Mutation(
        "parallel_tool_calls=false keeps two",
        "server/chat.py",
        "if c.index == 0)",
        "if c.index <= 1)",
        (U + "test_server_http.py",),
    ),
    Mutation(
        "lexer flush drops held text",
        LEX,
        "return [(False, held)] if held else []",
        "return []",
        PARSER_TESTS,
    ),
    Mutation(
        "unterminated call text dropped",
        OUT,
        "        self._content.append(self._pending)\n",
        "",
        PARSER_TESTS,
    ),
    Mutation(
        "integer arguments become floats",
        "server/parsers/values.py",
        "            return int(word)\n",
        "            return float(word)\n",
        PARSER_TESTS,
    ),
    Mutation(
        "parenthesised call keeps its closing paren",
        "server/parsers/tool_calls.py",
        'args_text = "{" + inner[1:-1] + "}"',
        'args_text = "{" + inner[1:] + "}"',
        PARSER_TESTS,
    ),
    # -- FP8 scales and tritonserver cleanup --------------------------------------------------------
    Mutation(
        "per-tensor FP8 weight scales",
        "build/engine_builder/weights.py",
        "    return quantize_per_row(w)\n",
        "    s = w.float().abs().amax().clamp(min=1e-12) / 448.0\n"
        "    return (w.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn), s.expand(w.shape[:-1]).contiguous()\n",
        FP8_TESTS,
    ),
    Mutation(
        "per-tensor FP8 activation scales",
        "gemma_runtime/model/linear.py",
        "    xq, x_scale = quantize_per_row(x2)  # [M, K] e4m3, [M]\n",
        "    xq, x_scale = quantize_per_row(x2.reshape(1, -1))  # [1, M*K]\n"
        "    xq, x_scale = xq.view_as(x2), x_scale.expand(x2.shape[0])  # [M, K], [M]\n",
        FP8_TESTS,
    ),
    Mutation(
        "stopped tritonserver leaves its stub",
        "triton_bridge/launcher.py",
        "        end_process_group(self.process.pid)\n",
        "",
        TRITON_TESTS,
        timeout=600,
    ),
)

# speculative decoding's own mutants live beside this list (mutations_speculative.py)
try:
    from .mutations_speculative import speculative_mutations
except ImportError:  # run.py puts this folder on sys.path and imports the list as a top-level module
    from mutations_speculative import speculative_mutations

MUTATIONS: tuple[Mutation, ...] = _CORE + speculative_mutations(Mutation)
