"""The mutation run (run.py) and its list of mutants (mutations.py)."""
