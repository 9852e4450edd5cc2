"""The garbage collector for a server whose heap is mostly startup objects.

After the engine loads, the heap holds millions of long-lived objects (torch, transformers, the
tokenizer, the model's modules). Every full collection walks all of them: 100-200 ms here, with the
GIL held, so whichever thread triggers it (the loop, a prompt worker) stalls the loop for that long.
A burst of requests allocates enough to trigger several. `gc.freeze()` moves what exists at startup
into a permanent generation that collections skip, so they walk only what requests made.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from later collections; returns how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
