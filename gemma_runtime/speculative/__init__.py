"""Speculative decoding: drafters propose tokens, the target verifies them all in one forward.

`protocol.py` (what a drafter is given and returns), `registry.py` (drafters by name), `ngram.py`
(prompt lookup), `mtp.py` and `mtp_graphs.py` (Gemma 4's drafter; its rounds as CUDA graphs), `policy.py` (which sequences draft this step), `verify.py` (the accept/reject rule per
sequence), `rejection.py` (the rejection sampler for drafts with probabilities), `metrics.py` (counters).
The engine drives it through `engine_hooks.py`. Imports nothing here.
"""
