"""What the engine calls for constrained decoding and logit bias: one object, four small hooks.

`prepare` (prepare pool): checks logit-bias ids and compiles the request's grammar, refusing what
cannot be enforced with a RequestError (a 400 on both backends). `attach` (engine thread): gives the
sequence a fresh grammar state. `lags` / `mask` (each step): whether the step's mask has to wait for the
previous step's tokens, and the mask itself. The xgrammar pieces are built on first use, so an engine
that never sees a constrained request never loads them.
"""

from __future__ import annotations

import threading

from gemma_runtime.api import GenerateRequest, RequestError
from gemma_runtime.grammar.logits import TokenMask


class StructuredDecoding:
    def __init__(self, tokenizer, vocab_size: int, stop_token_ids):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = frozenset(stop_token_ids)
        self._compiler = None
        self._step = None
        self._lock = threading.Lock()  # two prepare workers may ask for the compiler at once

    @property
    def compiler(self):
        with self._lock:
            if self._compiler is None:
                from gemma_runtime.grammar.compiler import GrammarCompiler

                self._compiler = GrammarCompiler(self.tokenizer, self.vocab_size, self.stop_token_ids)
            return self._compiler

    def prepare(self, request: GenerateRequest):
        """The compiled grammar of the request (None when unconstrained)."""
        p = request.sampling
        bad = [t for t, _ in p.logit_bias if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(f"logit_bias token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        if p.structured is None:
            return None
        from gemma_runtime.grammar.schema_check import UnsupportedSchema

        try:
            return self.compiler.compile(p.structured)
        except UnsupportedSchema as e:
            raise RequestError(str(e)) from None

    def attach(self, seq, request: GenerateRequest, compiled) -> None:
        if compiled is not None:
            seq.grammar = self.compiler.new_state(request.sampling.structured, compiled)

    @staticmethod
    def lags(scheduled) -> bool:
        """A constrained row's newest token is still on the device (overlap): its mask must wait."""
        return any(item.seq.grammar is not None and item.seq.num_pending > 0 for item in scheduled)

    def mask(self, seqs) -> TokenMask | None:
        if not any(s.grammar is not None for s in seqs):
            return None
        if self._step is None:
            from gemma_runtime.grammar.step import GrammarStep

            self._step = GrammarStep(self.vocab_size)
        return self._step.mask(seqs)
