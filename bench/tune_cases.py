"""The cases bench/tune_kernels.py times: `Case` (a tile function or switch, its candidates, the launch at
one shape), the real shapes of the 26B-A4B and the 31B (`model_cases`) and the tiny interpreter shapes of
the dry run (`dry_cases`). Imported by bench/tune_kernels.py after it has chosen Triton's interpreter
where there is no CUDA (these imports load triton)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from bench.kernel_inputs import decode_run, linear_run, moe_run, prefill_run, w8a16_run
from bench.random_engine import MODELS, SLIDING_WINDOW
from gemma_runtime.engine_format.fp8 import FP8
from gemma_runtime.kernels import fp8_gemm, gemv, moe_gemm, moe_gemv, paged_decode, paged_prefill
from gemma_runtime.model import linear


@dataclass(frozen=True)
class Case:
    kernel: str  # which tile function (or, for "w8a16-switch", which path) the candidates replace
    shape: str  # the shape, in words
    module: ModuleType
    attr: str  # the module attribute each candidate replaces
    candidates: tuple  # values for `attr`: tile tuples, or row limits for the switch
    make_run: Callable[[torch.device], Callable[[], torch.Tensor]]  # builds inputs once, returns the launch
    tile_arg: int | tuple = 0  # what the wrapper passes the tile function (head_dim, rows, tokens; a tuple: several)
    tolerance: float = 2e-2  # largest error relative to the output's largest magnitude that still counts as right
    weight_bytes: int = (
        0  # bytes of weight one launch reads, where that is the floor (prints the share of copy bandwidth)
    )

    def current(self):
        """What the runtime picks today for this shape."""
        value = getattr(self.module, self.attr)
        args = self.tile_arg if isinstance(self.tile_arg, tuple) else (self.tile_arg,)
        return value(*args) if callable(value) else value


def grid(*axes) -> tuple:
    return tuple(itertools.product(*axes))


def model_cases(model: str, kernels: set[str]) -> list[Case]:
    t = MODELS[model]["text"]
    hq, h, window = t["num_attention_heads"], t["hidden_size"], SLIDING_WINDOW[model]
    sliding = (t["num_key_value_heads"], t["head_dim"], window)
    full = (t["num_global_key_value_heads"], t["global_head_dim"], None)
    cases: list[Case] = []
    if "decode" in kernels:
        decode_tiles = grid((16, 32, 64), (2, 4, 8))  # (BLOCK_N, num_warps)
        for (kvh, d, win), batch, ctx in [
            (sliding, 1, 4096),
            (sliding, 64, 4096),
            (sliding, 256, 2048),
            (full, 1, 32768),
            (full, 64, 4096),
            (full, 256, 2048),
        ]:
            cases.append(
                Case(
                    "decode",
                    f"{model} d={d} {'sliding' if win else 'full'} B={batch} ctx={ctx}",
                    paged_decode,
                    "decode_tiles",
                    decode_tiles,
                    decode_run(batch, ctx, hq, kvh, d, win),
                    d,
                )
            )
    if "prefill" in kernels:
        prefill_tiles = grid((32, 64, 128), (16, 32, 64), (4, 8), (2, 3))  # (BLOCK_M, BLOCK_N, warps, stages)
        for kvh, d, win in (sliding, full):
            cases.append(
                Case(
                    "prefill",
                    f"{model} d={d} {'sliding' if win else 'full'} 2048 tokens",
                    paged_prefill,
                    "prefill_tiles",
                    prefill_tiles,
                    prefill_run(2048, hq, kvh, d, win),
                    d,
                )
            )
    if "moe" in kernels and MODELS[model]["kind"] == "moe":
        e, k, ie = t["num_experts"], t["top_k_experts"], t["moe_intermediate_size"]
        for tokens in (1, 16, 64, 512, 2048):
            bms = (16, 32) if tokens <= 64 else (32, 64, 128)
            tiles = grid(bms, (32, 64, 128), (64, 128), (4, 8), (3,))  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
            for fp8 in (False, True):
                cases.append(
                    Case(
                        "moe",
                        f"{model} {'fp8' if fp8 else 'bf16'} experts T={tokens}",
                        moe_gemm,
                        "expert_tiles",
                        tiles,
                        moe_run(tokens, h, e, k, ie, fp8),
                        tokens,
                    )
                )
    if "expert-gemv" in kernels and MODELS[model]["kind"] == "moe":  # e4m3 only, as moe_gemv.takes_expert_gemv
        e, k, ie = t["num_experts"], t["top_k_experts"], t["moe_intermediate_size"]
        cases.append(
            Case(
                "expert-gemv",
                f"{model} fp8 one-row experts T=1",
                moe_gemv,
                "expert_gemv_tiles",
                grid((2, 4, 8, 16), (256, 512, 1024), (2, 4, 8)),
                moe_run(1, h, e, k, ie, True),
                1,
            )
        )
    if "expert-gemv-switch" in kernels and MODELS[model]["kind"] == "moe":
        e, k, ie = t["num_experts"], t["top_k_experts"], t["moe_intermediate_size"]
        for tokens in (1, 2):
            for fp8 in (False, True):
                # False: the row-tile layout and the 16-row tile kernels; True: a matrix-vector product per routed row
                read = tokens * k * 3 * ie * h * (1 if fp8 else 2)  # at most T*k experts' gate, up and down rows
                stack = torch.empty((e, 2 * ie, h), dtype=FP8 if fp8 else torch.bfloat16, device="meta")
                cases.append(
                    Case(
                        "expert-gemv-switch",
                        f"{model} {'fp8' if fp8 else 'bf16'} experts T={tokens}",
                        moe_gemm,
                        "takes_expert_gemv",
                        (False, True),
                        moe_run(tokens, h, e, k, ie, fp8),
                        (tokens * k, stack),
                        weight_bytes=read,
                    )
                )
    layers = {
        "qkv": ((hq + 2 * sliding[0]) * sliding[1], h),
        "o": (h, hq * sliding[1]),
        "gate_up": (2 * t["intermediate_size"], h),
        "down": (h, t["intermediate_size"]),
    }  # name: (N, K)
    if "w8a16" in kernels:
        for rows in (1, 16, 64):
            bms = (16,) if rows <= 16 else (64,)
            tiles = grid(bms, (32, 64, 128), (128, 256), (4, 8))  # (BLOCK_M, BLOCK_N, BLOCK_K, warps)
            for name, (n, kk) in layers.items():
                cases.append(
                    Case(
                        "w8a16",
                        f"{model} {name} [{n}x{kk}] M={rows}",
                        fp8_gemm,
                        "w8a16_tiles",
                        tiles,
                        w8a16_run(rows, n, kk),
                        (rows, n * kk),
                    )
                )
    if "w8a16-switch" in kernels:
        for rows in (16, 32, 64, 128, 256, 512):
            for name, (n, kk) in layers.items():
                # 0: every row count through _scaled_mm; a huge limit: all through the W8A16 kernel. The two
                # differ by the activations' e4m3 rounding, hence the looser tolerance
                cases.append(
                    Case(
                        "w8a16-switch",
                        f"{model} {name} [{n}x{kk}] M={rows}",
                        linear,
                        "W8A16_MAX_ROWS",
                        (0, 1 << 30),
                        w8a16_run(rows, n, kk, path="fp8_linear"),
                        tolerance=0.1,
                    )
                )
    if "gemv" in kernels:  # where the runtime takes it: one row, e4m3 (linear.takes_gemv)
        tiles = grid((1, 2, 4, 8, 16), (512, 1024, 2048), (2, 4, 8))  # (BLOCK_N, BLOCK_K, warps)
        for name, (n, kk) in layers.items():
            cases.append(
                Case(
                    "gemv",
                    f"{model} fp8 {name} [{n}x{kk}] M=1",
                    gemv,
                    "gemv_tiles",
                    tiles,
                    linear_run(1, n, kk, True, kernel=True),
                    (1, 1),
                )
            )
    if "gemv-switch" in kernels:
        for rows in (1, 4):
            for fp8 in (False, True):
                for name, (n, kk) in layers.items():
                    # False: cuBLAS (bf16) or W8A16 (FP8); True: the matrix-vector kernel
                    w = torch.empty((n, kk), dtype=FP8 if fp8 else torch.bfloat16, device="meta")
                    cases.append(
                        Case(
                            "gemv-switch",
                            f"{model} {'fp8' if fp8 else 'bf16'} {name} [{n}x{kk}] M={rows}",
                            linear,
                            "takes_gemv",
                            (False, True),
                            linear_run(rows, n, kk, fp8),
                            (rows, w),
                            weight_bytes=n * kk * (1 if fp8 else 2),
                        )
                    )
    return cases


def dry_cases(kernels: set[str]) -> list[Case]:
    """Tiny shapes for the interpreter: the script's every path, two candidates per case."""
    cases = []
    if "decode" in kernels:
        cases += [
            Case(
                "decode",
                f"tiny d={d} B={b}",
                paged_decode,
                "decode_tiles",
                ((16, 4), (32, 2)),
                decode_run(b, 40, 4, 2, d, 8 if d == 32 else None),
                d,
            )
            for d, b in ((32, 1), (64, 3))
        ]
    if "prefill" in kernels:
        cases.append(
            Case(
                "prefill",
                "tiny d=32 24 tokens",
                paged_prefill,
                "prefill_tiles",
                ((16, 16, 4, 2), (32, 16, 4, 2)),
                prefill_run(24, 4, 2, 32, 8),
                32,
            )
        )
    if "moe" in kernels:
        tiles = ((16, 32, 64, 4, 3), (32, 64, 32, 4, 3))
        cases += [
            Case(
                "moe",
                f"tiny {'fp8' if fp8 else 'bf16'} T={t}",
                moe_gemm,
                "expert_tiles",
                tiles,
                moe_run(t, 64, 8, 2, 32, fp8),
                t,
            )
            for t, fp8 in ((3, False), (40, True))
        ]
    if "w8a16" in kernels:
        cases.append(
            Case(
                "w8a16",
                "tiny [96x128] M=5",
                fp8_gemm,
                "w8a16_tiles",
                ((16, 32, 64, 4), (16, 64, 128, 4)),
                w8a16_run(5, 96, 128),
                (5, 96 * 128),
            )
        )
    if "w8a16-switch" in kernels:
        cases.append(
            Case(
                "w8a16-switch",
                "tiny [96x128] M=20",
                linear,
                "W8A16_MAX_ROWS",
                (0, 1 << 30),
                w8a16_run(20, 96, 128, path="fp8_linear"),
                tolerance=0.1,
            )
        )
    if "expert-gemv" in kernels:
        cases.append(
            Case(
                "expert-gemv",
                "tiny bf16 one-row experts T=2",
                moe_gemv,
                "expert_gemv_tiles",
                ((4, 64, 4), (2, 32, 2)),
                moe_run(2, 64, 8, 2, 32, False),
                2,
            )
        )
    if "expert-gemv-switch" in kernels:
        cases.append(
            Case(
                "expert-gemv-switch",
                "tiny fp8 experts T=1",
                moe_gemm,
                "takes_expert_gemv",
                (False, True),
                moe_run(1, 64, 8, 2, 32, True),
                (2, torch.empty((8, 64, 64), dtype=FP8, device="meta")),
                weight_bytes=2 * 3 * 32 * 64,
            )
        )
    if "gemv" in kernels:
        cases.append(
            Case(
                "gemv",
                "tiny fp8 [96x128] M=3",
                gemv,
                "gemv_tiles",
                ((4, 64, 4), (2, 128, 2)),
                linear_run(3, 96, 128, True, kernel=True),
                (3, 1),
            )
        )
    if "gemv-switch" in kernels:
        cases.append(
            Case(
                "gemv-switch",
                "tiny fp8 [96x128] M=1",
                linear,
                "takes_gemv",
                (False, True),
                linear_run(1, 96, 128, True),
                (1, torch.empty((96, 128), dtype=FP8, device="meta")),
                weight_bytes=96 * 128,
            )
        )
    return cases
