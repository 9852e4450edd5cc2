"""Kernel launches per decode step, counted without a GPU: what a CUDA graph replays each step.

Inside a graph a launch costs no host time, but each kernel still costs the GPU a few microseconds of
ramp-up and tail; at batch 1 the 26B-A4B's whole step should take about 3 ms, so the count matters.
The tiny random MoE engine runs one decode step with the CUDA backends (Triton kernels, executed by
Triton's CPU interpreter): every torch op that would launch a kernel (views and other metadata-only ops
excluded) and every Triton launch is counted, per decoder layer, with the reference RMSNorm (eight
torch ops per norm, seven more for rope on q and k) and with the fused Triton one (norm, residual add,
layer scalar and rope in one kernel).

    .venv/bin/python -m bench.decode_launches
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels run on the CPU

import torch  # noqa: E402
import triton.runtime.interpreter as interpreter  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from bench.random_engine import make_random_engine, weights_in_memory  # noqa: E402
from gemma_runtime.api import GenerateRequest, SamplingParams  # noqa: E402
from gemma_runtime.config import RuntimeConfig  # noqa: E402
from gemma_runtime.engine.llm_engine import LLMEngine  # noqa: E402
from gemma_runtime.model.cuda_backends import (  # noqa: E402
    TritonFusedExperts,
    TritonGEGLU,
    TritonKVWrite,
    TritonPagedAttention,
    TritonRMSNorm,
)
from gemma_runtime.model.kv_write import TorchKVWrite  # noqa: E402
from gemma_runtime.model.layers import TorchGEGLU, TorchRMSNorm  # noqa: E402

# ops that only make a new view or read metadata: no kernel on a GPU
NO_KERNEL = {
    "view",
    "_unsafe_view",
    "slice",
    "select",
    "expand",
    "as_strided",
    "t",
    "transpose",
    "detach",
    "alias",
    "unsqueeze",
    "squeeze",
    "permute",
    "split",
    "split_with_sizes",
    "chunk",
    "unbind",
    "reshape",
    "empty",
    "empty_like",
    "empty_strided",
    "lift_fresh",
    "sym_size",
    "sym_stride",
    "is_same_size",
    "resolve_conj",
    "resolve_neg",
    "_reshape_alias",
    "new_empty",
    "new_empty_strided",
    "flatten",
    "detach_",
}


class LaunchCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if not self.paused and name not in NO_KERNEL and not self._returns_an_input(name, args, out):
            self.ops[name] += 1
        return out

    @staticmethod
    def _returns_an_input(name: str, args, out) -> bool:
        """A no-op conversion (.to, type_as to the same dtype) hands back its input: no kernel."""
        if name.endswith("_") or not isinstance(out, torch.Tensor):
            return False
        return any(
            isinstance(a, torch.Tensor) and a.data_ptr() == out.data_ptr() and a.shape == out.shape for a in args
        )


def count_decode_step(engine: LLMEngine) -> Counter[str]:
    counter = LaunchCounter()
    real_run = interpreter.InterpretedFunction.run

    def counted_run(fn, *args, **kwargs):  # one Triton launch; the interpreter's own torch work is not counted
        counter.ops[f"triton:{fn.fn.__name__}"] += 1
        counter.paused += 1
        try:
            return real_run(fn, *args, **kwargs)
        finally:
            counter.paused -= 1

    interpreter.InterpretedFunction.run = counted_run
    try:
        plan = engine.scheduler.schedule()
        with torch.inference_mode(), counter:
            batch = engine.runner._build_batch(plan.scheduled)
            engine.runner.text.forward(batch, engine.runner.kv_caches)
    finally:
        interpreter.InterpretedFunction.run = real_run
    return counter.ops


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="launches-") as tmp:
        made = make_random_engine("tiny", "bf16", torch.device("cpu"), Path(tmp) / "tiny")

        layers = len(made.spec.text.layers)
        print(f"tiny random MoE engine: {layers} layers, one decode step at batch 4, CUDA backends (interpreted)")
        rows = []
        backends = (
            ("reference", TorchRMSNorm(), TorchKVWrite(), TorchGEGLU()),
            ("fused Triton", TritonRMSNorm(), TritonKVWrite(), TritonGEGLU()),
        )
        for label, norm, kv_write, geglu in backends:
            with weights_in_memory(made.weights):
                engine = LLMEngine(made.engine_dir, RuntimeConfig(block_size=4, max_model_len=64))
            text = engine.runner.text
            text.attention, text.experts, text.geglu = TritonPagedAttention(), TritonFusedExperts(), geglu
            text.norm, text.kv_write = norm, kv_write
            for i in range(4):
                engine.add_request(GenerateRequest(f"r{i}", [2, 10 + i, 20 + i], SamplingParams(max_tokens=8)))
            while not all(s.output_token_ids for s in engine.scheduler.running) or engine.scheduler.waiting:
                engine.step()  # prefills: every sequence is decoding now
            ops = count_decode_step(engine)
            total = sum(ops.values())
            triton_launches = sum(n for k, n in ops.items() if k.startswith("triton:"))
            rows.append((label, total, triton_launches, total / layers))
            top = ", ".join(f"{k} {n}" for k, n in ops.most_common(int(os.environ.get("TOP", 6))))
            print(f"  {label}: most frequent: {top}")
        print(f"\n{'norms (+ add, rope), GEGLU':26} {'launches/step':>14} {'of which Triton':>16} {'per layer':>10}")
        for label, total, tri, per_layer in rows:
            print(f"{label:26} {total:>14} {tri:>16} {per_layer:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
