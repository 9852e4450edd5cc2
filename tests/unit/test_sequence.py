from gemma_runtime.api import SamplingParams
from gemma_runtime.scheduling.sequence import Sequence


def test_sequence_token_slices_cross_the_prompt_boundary():
    seq = Sequence("s", [1, 2, 3, 4], SamplingParams(), frozenset(), output_token_ids=[5, 6, 7])
    for lo in range(8):
        for hi in range(lo, 8):
            assert seq.tokens(lo, hi) == seq.token_ids[lo:hi]
