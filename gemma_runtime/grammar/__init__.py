"""Constrained decoding: per-request grammar states (xgrammar), the step's token mask, logit bias.

`spec.py` (what a request asks for) is imported by the runtime's contract (`api.py`) and imports
nothing heavy; the xgrammar-backed modules (`compiler.py`, `step.py`) load when the engine first needs them.
"""
