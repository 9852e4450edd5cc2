"""Checks around the converter, not part of it: `memcheck` (random checkpoints of any size and a
conversion measured in a subprocess; bench/convert_memory.py runs it)."""
