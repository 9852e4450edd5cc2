"""`make verify`: an engine against the Hugging Face checkpoint it was built from, run by transformers.

`python -m bench.verify --engine engines/<name> [--reference <checkpoint>]`. A fixed set of prompts
(prompts.py) goes through our engine (ours.py: greedy steps, then every position's logits teacher-forced)
and through transformers (theirs.py: the same token ids and pixels); compare.py turns the two into
per-prompt figures and judges them against the engine dtype's thresholds (thresholds.py); report.py
prints the table. reference.py finds and checks the reference checkpoint.
"""
