"""Compile every Triton kernel configuration the runtime launches for the H100 (sm_90), without a GPU.

Prints per kernel: shared memory, registers and local-memory bytes (spills) from the cubin, and which
matrix instructions the SASS uses (HGMMA is Hopper's warpgroup MMA, HMMA the older per-warp one;
STL/LDL are spills). Catches compile errors the CPU interpreter cannot see (type mismatches between
branches, shared-memory overruns) and answers the first performance questions at no device time.

    .venv/bin/python -m bench.compile_kernels
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from gemma_runtime.kernels import (
    fp8_gemm,
    geglu,
    gemv,
    kv_write,
    moe_align,
    moe_gemm,
    moe_gemv,
    moe_routing,
    paged_decode,
    paged_prefill,
    rms_norm,
)

TARGET = GPUTarget("cuda", 90, 32)
SMEM_LIMIT = 227 * 1024
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
BF16, I64, F32, FP8 = "*bf16", "*i64", "*fp32", "*fp8e4nv"


def compile_one(fn, pointer_types: dict[str, str], constexprs: dict, num_warps: int, num_stages: int) -> dict:
    sig = {n: "constexpr" if n in constexprs else pointer_types.get(n, "i32") for n in fn.arg_names}
    # What the JIT sees at run time: torch's allocations are 16-byte aligned, and the models' widths (so
    # every stride) are multiples of 16. Without these the compiler cannot prove 16-byte loads legal and
    # the report shows narrower loads and other register counts than the GPU runs (W8A16: 239 vs 80).
    aligned = {
        (i,): [["tt.divisibility", 16]]
        for i, n in enumerate(fn.arg_names)
        if n in pointer_types or n.startswith("stride")
    }
    k = triton.compile(
        ASTSource(fn, sig, constexprs=constexprs, attrs=aligned),
        target=TARGET,
        options={"num_warps": num_warps, "num_stages": num_stages},
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        sass = subprocess.run([CUOBJDUMP, "-sass", f.name], capture_output=True, text=True).stdout
        res = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
    usage = dict(re.findall(r"(REG|LOCAL):(\d+)", res))
    return {
        "shared": k.metadata.shared,
        "regs": int(usage.get("REG", -1)),
        "local": int(usage.get("LOCAL", -1)),
        **{op: len(re.findall(rf"\b{op}\b", sass)) for op in ("HGMMA", "HMMA", "STL", "LDL")},
    }


def configs():
    for d in (256, 512):
        block_n, warps = paged_decode.decode_tiles(d)
        group = 2 if d == 256 else 8  # the 26B-A4B's GQA groups (sliding 16/8, full 16/2)
        for sliding, splits in ((True, 16), (False, 16), (True, 1)):  # one split: the output written directly
            yield (
                f"decode d={d} sliding={sliding} splits={splits}",
                paged_decode._decode_split_kernel,
                {
                    "q_ptr": BF16,
                    "k_cache_ptr": BF16,
                    "v_cache_ptr": BF16,
                    "block_tables_ptr": I64,
                    "context_lens_ptr": I64,
                    "part_out_ptr": F32,
                    "part_lse_ptr": F32,
                    "out_ptr": BF16,
                },
                dict(
                    SLIDING=sliding,
                    GROUP=group,
                    GROUP_PAD=16,
                    HEAD_DIM=d,
                    HEAD_PAD=d,
                    BLOCK_N=block_n,
                    NUM_SPLITS=splits,
                    F32_DOT=False,
                ),
                warps,
                2,
            )
        yield (
            f"decode merge d={d}",
            paged_decode._decode_merge_kernel,
            {"part_out_ptr": F32, "part_lse_ptr": F32, "out_ptr": BF16},
            dict(HEAD_DIM=d, HEAD_PAD=d, NUM_SPLITS=16),
            4,
            2,
        )
        block_m, block_n, warps, stages = paged_prefill.prefill_tiles(d)
        for sliding, spans in ((True, False), (True, True), (False, False)):  # spans: images, sliding layers only
            yield (
                f"prefill d={d} sliding={sliding}{' spans' if spans else ''}",
                paged_prefill._prefill_kernel,
                {
                    "q_ptr": BF16,
                    "k_cache_ptr": BF16,
                    "v_cache_ptr": BF16,
                    "out_ptr": BF16,
                    "block_tables_ptr": I64,
                    "query_start_ptr": I64,
                    "positions_ptr": I64,
                    "span_ptr": I64,
                },
                dict(
                    SLIDING=sliding,
                    HAS_SPANS=spans,
                    GROUP=group,
                    HEAD_DIM=d,
                    HEAD_PAD=d,
                    BLOCK_M=block_m,
                    BLOCK_N=block_n,
                    F32_DOT=False,
                ),
                warps,
                stages,
            )
    for row_tiles in (0, 16):  # 16: one tile per routed row laid out too (batches of 1 and 2)
        yield (
            f"moe route E=128 k=8 row_tiles={row_tiles}",
            moe_routing._route_kernel,
            {"logits_ptr": BF16, "weights_ptr": F32, "ids_ptr": I64, "rows_ptr": I64, "tile_expert_ptr": I64},
            dict(E=128, E_PAD=128, TOP_K=8, ROW_TILES=row_tiles),
            1,
            2,
        )
    I32 = "*i32"
    yield (
        "moe align: layout",
        moe_align._expert_layout_kernel,
        {"ids_ptr": I64, "run_start_ptr": I32, "fill_ptr": I32, "tile_expert_ptr": I64, "rows_ptr": I64},
        dict(E=128, E_PAD=128, BLOCK_M=16, IDS=1024, TILES=32, SLOTS=1024),
        4,
        1,
    )
    yield (
        "moe align: scatter",
        moe_align._scatter_rows_kernel,
        {"ids_ptr": I64, "run_start_ptr": I32, "fill_ptr": I32, "rows_ptr": I64},
        dict(BLOCK=256),
        4,
        1,
    )
    for tokens in (1, 512):
        bm, bn, bk, warps, stages = moe_gemm.expert_tiles(tokens)
        for wname, wtype in (("bf16", BF16), ("fp8", FP8)):
            scaled = wname == "fp8"
            yield (
                f"moe gate_up {wname} M={bm}",
                moe_gemm._gate_up_kernel,
                {
                    "x_ptr": BF16,
                    "w_ptr": wtype,
                    "scale_ptr": F32,
                    "h_ptr": BF16,
                    "rows_ptr": I64,
                    "tile_expert_ptr": I64,
                },
                dict(TOP_K=8, HAS_SCALE=scaled, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, F32_DOT=False),
                warps,
                stages,
            )
            yield (
                f"moe down {wname} M={bm}",
                moe_gemm._down_kernel,
                {
                    "h_ptr": BF16,
                    "w_ptr": wtype,
                    "scale_ptr": F32,
                    "out_ptr": F32,
                    "rows_ptr": I64,
                    "tile_expert_ptr": I64,
                    "routing_ptr": F32,
                },
                dict(HAS_SCALE=scaled, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, F32_DOT=False),
                warps,
                stages,
            )

    for wname, wtype in (("bf16", BF16), ("fp8", FP8)):  # one routed row per program (batches of one or two)
        bn, bk, warps = moe_gemv.expert_gemv_tiles(2 if wname == "bf16" else 1)
        yield (
            f"moe gate_up one-row {wname}",
            moe_gemv._gate_up_gemv_kernel,
            {"x_ptr": BF16, "w_ptr": wtype, "scale_ptr": F32, "h_ptr": BF16, "ids_ptr": I64},
            dict(TOP_K=8, HAS_SCALE=wname == "fp8", BLOCK_N=bn, BLOCK_K=bk),
            warps,
            3,
        )
        yield (
            f"moe down one-row {wname}",
            moe_gemv._down_gemv_kernel,
            {"h_ptr": BF16, "w_ptr": wtype, "scale_ptr": F32, "out_ptr": F32, "ids_ptr": I64, "routing_ptr": F32},
            dict(HAS_SCALE=wname == "fp8", BLOCK_N=bn, BLOCK_K=bk),
            warps,
            3,
        )
    for rows, weight in ((1, 1 << 26), (64, 1 << 26), (64, 1 << 23)):  # the 64-row tiles of large and small weights
        bm, bn, bk, warps = fp8_gemm.w8a16_tiles(rows, weight)
        for splits in (1, 4):
            yield (
                f"fp8 linear W8A16 M={bm} N={bn} split={splits}",
                fp8_gemm._w8a16_kernel,
                {"x_ptr": BF16, "w_ptr": FP8, "scale_ptr": F32, "out_ptr": BF16 if splits == 1 else F32},
                dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=splits, F32_DOT=False),
                warps,
                3,
            )

    for rows in (1, 4):
        for wname, wtype in (("bf16", BF16), ("fp8", FP8)):
            bn, bk, warps = gemv.gemv_tiles(rows, 2 if wname == "bf16" else 1)
            yield (
                f"gemv {wname} M={rows}",
                gemv._gemv_kernel,
                {"x_ptr": BF16, "w_ptr": wtype, "scale_ptr": F32, "out_ptr": BF16},
                dict(BLOCK_M=rows, BLOCK_N=bn, BLOCK_K=bk, HAS_SCALE=wname == "fp8"),
                warps,
                3,
            )
    for d, nq, nkv, k_eq_v in ((256, 16, 8, False), (512, 16, 2, True)):  # the 26B-A4B's sliding and full layers
        yield (
            f"qkv norm+rope+cache write d={d}",
            kv_write._qkv_norm_kernel,
            {
                "qkv_ptr": BF16,
                "q_w_ptr": BF16,
                "k_w_ptr": BF16,
                "cos_ptr": F32,
                "sin_ptr": F32,
                "q_out_ptr": BF16,
                "k_cache_ptr": BF16,
                "v_cache_ptr": BF16,
                "slots_ptr": I64,
                "eps": "fp32",
            },
            dict(NQ=nq, NKV=nkv, D=d, K_EQ_V=k_eq_v, BLOCK=d),
            min(16, max(1, d // 256)),
            1,
        )
    for h, moe in ((2816, True), (5376, False)):
        yield (
            f"ffn prologue H={h}{' moe' if moe else ''}",
            rms_norm._ffn_prologue_kernel,
            {
                "h_ptr": BF16,
                "res_ptr": BF16,
                "w_post_attn_ptr": BF16,
                "w_pre_ffn_ptr": BF16,
                "w_experts_ptr": BF16,
                "router_scale_ptr": BF16,
                "x_out_ptr": BF16,
                "mlp_out_ptr": BF16,
                "experts_out_ptr": BF16,
                "router_out_ptr": BF16,
                "eps": "fp32",
                "router_factor": "fp32",
            },
            dict(HAS_MOE=moe, BLOCK=triton.next_power_of_2(h)),
            16,
            1,
        )
    yield (
        "moe epilogue H=2816 k=8",
        rms_norm._moe_epilogue_kernel,
        {
            "dense_ptr": BF16,
            "experts_ptr": F32,
            "res_ptr": BF16,
            "w_dense_ptr": BF16,
            "w_experts_ptr": BF16,
            "w_post_ptr": BF16,
            "scalar_ptr": BF16,
            "w_next_ptr": BF16,
            "out_ptr": BF16,
            "next_ptr": BF16,
            "eps": "fp32",
        },
        dict(SLOTS=8, BLOCK=4096),
        16,
        1,
    )
    yield (
        "layer end H=5376",
        rms_norm._layer_end_kernel,
        {
            "m_ptr": BF16,
            "res_ptr": BF16,
            "w_post_ptr": BF16,
            "scalar_ptr": BF16,
            "w_next_ptr": BF16,
            "out_ptr": BF16,
            "next_ptr": BF16,
            "eps": "fp32",
        },
        dict(BLOCK=8192),
        16,
        1,
    )
    yield ("geglu", geglu._geglu_kernel, {"x_ptr": BF16, "out_ptr": BF16}, dict(BLOCK=1024), 4, 1)
    for h in (256, 512, 2816, 5376):  # head dims (q/k/v norms) and the two hidden sizes
        block = triton.next_power_of_2(h)
        for residual, rope in ((False, False), (True, False), (False, True)):
            if rope and h > 512:
                continue  # rope follows the q and k norms only
            extra = " +residual*scale" if residual else " +rope" if rope else ""
            yield (
                f"rms_norm H={h}{extra}",
                rms_norm._rms_norm_kernel,
                {
                    "x_ptr": BF16,
                    "w_ptr": BF16,
                    "res_ptr": BF16,
                    "scale_ptr": BF16,
                    "cos_ptr": F32,
                    "sin_ptr": F32,
                    "out_ptr": BF16,
                    "eps": "fp32",
                },
                dict(HAS_WEIGHT=True, HAS_RESIDUAL=residual, HAS_SCALE=residual, HAS_ROPE=rope, BLOCK=block),
                min(16, max(1, block // 256)),
                1,
            )


def main() -> int:
    print(
        f"triton {triton.__version__}, target sm_{TARGET.arch} (the lent H100's image has triton 3.6: compile with that one to see what it will run)"
    )
    print(f"{'kernel':34} {'shared KB':>9} {'regs':>5} {'local':>6} {'HGMMA':>6} {'HMMA':>5} {'STL':>4} {'LDL':>4}")
    failed = 0
    for name, fn, types, constexprs, warps, stages in configs():
        r = compile_one(fn, types, constexprs, warps, stages)
        over = r["shared"] > SMEM_LIMIT
        failed += over
        print(
            f"{name:34} {r['shared'] / 1024:9.1f} {r['regs']:5} {r['local']:6} {r['HGMMA']:6} {r['HMMA']:5} "
            f"{r['STL']:4} {r['LDL']:4}{'  OVER THE SHARED-MEMORY LIMIT' if over else ''}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
