"""Moving a step's small host values to the device, and its results back, without making the host wait.

`torch.tensor(values, device="cuda")` copies from pageable memory, after which PyTorch synchronises the
stream: the host waits for every kernel already queued, which is exactly what overlapping the next
step's preparation with the current step's kernels must avoid. Staging through pinned memory with
`non_blocking=True` queues the copy behind those kernels instead. PyTorch's caching host allocator
keeps a pinned block out of reuse until the copy that reads it has run, so the staging buffers need no
bookkeeping here. On the CPU both directions are plain tensors.
"""

from __future__ import annotations

import torch


def to_device(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list (or nested lists) as a tensor on `device`, copied without a host synchronisation."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return host
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


class HostCopy:
    """Device tensors (None entries allowed) copied to the host in the background; `wait` returns them."""

    def __init__(self, tensors: list[torch.Tensor | None]):
        self.event = None
        if not any(t is not None and t.is_cuda for t in tensors):
            self.host = [t if t is None or t.device.type == "cpu" else t.cpu() for t in tensors]
            return
        self.host = [
            None if t is None else torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
            for t in tensors
        ]
        self.event = torch.cuda.Event()
        self.event.record()

    def wait(self) -> list[torch.Tensor | None]:
        if self.event is not None:
            self.event.synchronize()  # waits for this step's kernels and copies only, not later ones
        return self.host
