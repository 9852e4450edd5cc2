"""Recording the calls a test expects the code under test to make (which padded graphs ran a step, say),
while the real method still runs."""

from __future__ import annotations


def recorded_calls(obj, name: str = "run") -> list[tuple]:
    """Wraps obj.<name> so that each call's positional arguments are appended to the returned list; an
    obj of None (a feature that is off) records nothing."""
    calls: list[tuple] = []
    if obj is not None:
        real = getattr(obj, name)

        def recording(*args):
            calls.append(args)
            return real(*args)

        setattr(obj, name, recording)
    return calls
