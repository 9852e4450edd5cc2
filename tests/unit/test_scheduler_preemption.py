"""Preemption in the scheduler alone: when pages run out, the newest running sequence is preempted, goes back
to the front of the waiting queue with nothing computed (its pages were given back, so its KV is gone),
and is recomputed whole (prompt and the tokens it had generated) when it is admitted again. The parity
tests check the same end to end against transformers; this catches a lost reset in seconds."""

from __future__ import annotations

from gemma_runtime.scheduling.sequence import SequenceStatus

try:
    from .test_scheduler_budget import make_scheduler, run_step, seq
except ImportError:
    from test_scheduler_budget import make_scheduler, run_step, seq


def test_a_preempted_sequence_is_recomputed_from_the_start():
    s = make_scheduler(budget=64, blocks=6)  # 6 pages of 4: two prompts of 10 fill them (3 pages each)
    s.add(seq("old", 10))
    s.add(seq("new", 10))
    assert run_step(s, outputs_per_seq=99) == [("old", 10), ("new", 10)]
    for _ in range(2):  # tokens 11 and 12 of each still fit its third page
        assert run_step(s, outputs_per_seq=99) == [("old", 1), ("new", 1)]
    # token 13 of "old" needs a fourth page: "new" (the newest) gives its three back
    plan = s.schedule()
    victim = s.waiting[0]
    assert [p.request_id for p in plan.preempted] == ["new"] and victim.request_id == "new"
    assert victim.num_computed == 0 and victim.status is SequenceStatus.WAITING and victim.num_preemptions == 1
    assert [(i.seq.request_id, i.num_new) for i in plan.scheduled] == [("old", 1)]
    for item in plan.scheduled:
        item.seq.num_computed += item.num_new
        item.seq.output_token_ids.append(7)
    s.remove(s.running[0])  # "old" ends; "new" comes back and recomputes all it had: 10 + 3 tokens
    assert victim.num_tokens == 13
    assert run_step(s, outputs_per_seq=99) == [("new", 13)]
