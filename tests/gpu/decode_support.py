"""What the decode-path tests share: the device, a host-read detector, engines on the Triton backends.

Without CUDA the Triton kernels run under Triton's CPU interpreter, and a call into the runtime is watched
for every torch call that would make the host wait for the GPU (.item(), .tolist(), bool(tensor),
nonzero, bincount, boolean-mask indexing...) made by our code. With CUDA PyTorch's own sync detector
(torch.cuda.set_sync_debug_mode) watches the same call.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are decorated

from gemma_runtime.config import RuntimeConfig  # noqa: E402
from gemma_runtime.engine.llm_engine import LLMEngine  # noqa: E402
from gemma_runtime.model.cuda_backends import (  # noqa: E402
    TritonFusedExperts,
    TritonGEGLU,
    TritonKVWrite,
    TritonPagedAttention,
    TritonRMSNorm,
)

DEVICE = torch.device("cuda" if CUDA else "cpu")
RUNTIME = str(Path(__import__("gemma_runtime").__file__).parent)
TORCH = str(Path(torch.__file__).parent)
# torch calls that wait for the device (on CUDA) before they return
READS_BACK = {
    "item",
    "tolist",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "nonzero",
    "argwhere",
    "bincount",
    "cpu",
    "numpy",
    "unique",
    "unique_consecutive",
    "masked_select",
    "equal",
    "allclose",
}
PROMPTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Hi there",
    "<bos><|turn>user\nTell me a story about the sea.<turn|>\n<|turn>model\n",
]


class HostReadDetector(TorchFunctionMode):
    """Records torch calls that read device data on the host, when our own code makes them (the
    interpreter's copies of kernel arguments come from triton's frames and are not ours)."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        reads = name in READS_BACK or (name in ("__getitem__", "__setitem__") and _has_bool_index(args))
        reads = reads or (
            name == "repeat_interleave"
            and isinstance(args[1] if len(args) > 1 else kwargs.get("repeats"), torch.Tensor)
            and "output_size" not in kwargs
        )
        if reads:
            caller = _first_caller_outside_torch()
            if caller is not None and caller.startswith(RUNTIME):
                self.found.append(f"{name} from {caller}")
        return func(*args, **kwargs)


def _has_bool_index(args) -> bool:
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _first_caller_outside_torch() -> str | None:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(TORCH) and name != __file__:
            return f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def registry_engine(engine_dir, **kwargs) -> LLMEngine:
    """float32 on DEVICE with the registry's backends: the Triton ones on CUDA, the reference ones on the
    CPU (fast: what tests run before the step they watch, and the plain engines they compare with)."""
    settings = dict(block_size=4, max_model_len=128) | kwargs
    return LLMEngine(engine_dir, RuntimeConfig(device=DEVICE.type, dtype="float32", **settings))


def engine_on_device(engine_dir, **kwargs) -> LLMEngine:
    """registry_engine, on the Triton backends everywhere (under the interpreter on the CPU)."""
    engine = registry_engine(engine_dir, **kwargs)
    if not CUDA:  # on CUDA the registry chose these already
        swap_backends(engine)
    return engine


def swap_backends(engine: LLMEngine) -> None:
    """The Triton backends in place of the reference ones (on the CPU, run by the interpreter)."""
    engine.runner.text.attention = TritonPagedAttention()
    engine.runner.text.experts = TritonFusedExperts()
    engine.runner.text.norm = TritonRMSNorm()
    engine.runner.text.kv_write = TritonKVWrite()
    engine.runner.text.geglu = TritonGEGLU()


def run_watched(fn, *args):
    """fn(*args) watched for host reads: (its result, the reads our code made). On CUDA a read raises
    (sync debug mode "error"), so the list is empty when it returns."""
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return fn(*args), []
        finally:
            torch.cuda.set_sync_debug_mode("default")
    with HostReadDetector() as detector:
        out = fn(*args)
    return out, detector.found
