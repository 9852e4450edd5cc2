"""The verify step's rule per sequence: from the target's sample at each of its n + 1 rows, the tokens
to emit. Row j's sample is drawn from the target's distribution given the drafts before it (the rows'
sampling inputs carry them as history), so keeping drafts while they equal the sample is exact: greedy
rows keep exactly the target's argmax, sampled rows follow the target's law (rejection.py)."""

from __future__ import annotations


def accepted_run(samples: list[int], drafts: list[int]) -> list[int]:
    """samples: the target's token at each of the len(drafts) + 1 rows. Emits samples[: a + 1] where a
    is the number of leading drafts equal to the samples."""
    a = 0
    while a < len(drafts) and samples[a] == drafts[a]:
        a += 1
    return samples[: a + 1]
