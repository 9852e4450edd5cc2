"""Speculative decoding's mutants for the mutation run (mutations.py holds the rest and the Mutation
type, which it passes in: this module imports nothing from it, so either import style of the list works)."""

from __future__ import annotations


def speculative_mutations(Mutation) -> tuple:  # noqa: N803 (the dataclass itself)
    return (
        Mutation(
            "rejected drafts' residual drawn from the target itself",
            "gemma_runtime/speculative/rejection.py",
            "        residual = (p[i] - q[i]).clamp_min(0.0)  # [V]\n",
            "        residual = p[i].clone()  # [V]\n",
            ("tests/unit/test_rejection_sampler.py",),
        ),
        Mutation(
            "the first draft always kept",
            "gemma_runtime/speculative/verify.py",
            "    while a < len(drafts) and samples[a] == drafts[a]:\n",
            "    while a < len(drafts) and (samples[a] == drafts[a] or a == 0):\n",
            ("tests/unit/test_spec_decode_parts.py", "tests/unit/test_spec_decode_engine.py"),
        ),
        Mutation(
            "the device block tables miss a speculative rollback",
            "gemma_runtime/executor/device_block_tables.py",
            "            if t.trimmed_to is not None:  # speculation rolled pages back: what follows is new\n",
            "            if False:\n",
            ("tests/unit/test_spec_decode_engine.py", "tests/parity/test_spec_decode_parity.py"),
        ),
    )
