"""bench/profile_decode.py: the dry run profiles real decode steps of the tiny random engine (graphs and
overlap on, as on a GPU) and writes a Chrome trace and a summary whose parts add up."""

from __future__ import annotations

import gzip
import importlib
import json
import math
import subprocess
import sys

import pytest


def test_dry_run_writes_a_trace_and_a_summary_that_adds_up(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.profile_decode",
            "--dry-run",
            "--batch",
            "2",
            "--decode-graphs",
            "on",
            "--overlap",
            "on",
            "--out",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tiny-bf16-batch2: graphs on, overlap on" in proc.stdout
    summary = json.loads((tmp_path / "tiny-bf16-batch2.summary.json").read_text())
    assert summary["graphs"] and summary["overlap"] and summary["steps"] == 3
    assert 0 < summary["kernel_ms_per_step"] < summary["profiled_wall_ms_per_step"]
    assert 0 < summary["wall_ms_per_step"] and summary["gemv"] == "on"  # the runtime's own choice
    assert summary["kernels_per_step"] > 6 * 5  # the tiny engine's 6 layers, a few operators each at least
    assert math.isclose(sum(summary["parts_ms_per_step"].values()), summary["kernel_ms_per_step"], rel_tol=1e-6)
    assert "aten::mm" in summary["top_kernels_us_per_step"]  # the projections ran inside the profile
    trace = json.loads(gzip.decompress((tmp_path / "tiny-bf16-batch2.trace.json.gz").read_bytes()))
    assert any(e.get("name") == "aten::mm" for e in trace["traceEvents"])


@pytest.fixture
def profile_decode():
    return importlib.import_module("bench.profile_decode")


@pytest.mark.parametrize(
    "kernel, part",
    [
        ("_decode_split_kernel", "attention (+KV writes)"),
        ("_prefill_kernel", "attention (+KV writes)"),
        ("_gate_up_kernel", "MoE experts and routing"),
        ("_expert_layout_kernel", "MoE experts and routing"),
        ("_w8a16_kernel", "GEMMs (projections, LM head)"),
        ("_gemv_kernel", "GEMMs (projections, LM head)"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "GEMMs (projections, LM head)"),
        ("nvjet_tst_128x64_64x8_2x1_v_bz_TNN", "GEMMs (projections, LM head)"),
        ("_rms_norm_kernel", "norms and rope"),
        ("_qkv_norm_kernel", "norms and rope"),
        ("_ffn_prologue_kernel", "norms and rope"),
        ("_moe_epilogue_kernel", "norms and rope"),
        ("_geglu_kernel", "elementwise and copies"),
        ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float>", "sampling"),
        (
            "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>",
            "elementwise and copies",
        ),
    ],
)
def test_cuda_kernel_names_land_in_their_part(profile_decode, kernel, part):
    assert profile_decode.part_of(kernel) == part


def test_a_run_without_the_matrix_vector_kernels_is_named_so_and_can_skip_its_trace(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.profile_decode",
            "--dry-run",
            "--gemv",
            "off",
            "--trace",
            "off",
            "--steps",
            "2",
            "--out",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "tiny-bf16-batch1-no-gemv.summary.json").read_text())
    assert summary["gemv"] == "off" and summary["steps"] == 2
    assert not list(tmp_path.glob("*.trace.json.gz"))


def test_on_cuda_only_kernels_count_not_the_operators_that_launched_them(profile_decode):
    """An operator's self device time is its kernels' time again (aten::mm and the GEMM it launched):
    counting both doubled the LM head in the first H100 profile."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    events = [
        SimpleNamespace(
            key="aten::mm", device_type=DeviceType.CPU, self_device_time_total=500.0, count=1, self_cpu_time_total=20.0
        ),
        SimpleNamespace(
            key="nvjet_sm90_tst_512x8",
            device_type=DeviceType.CUDA,
            self_device_time_total=498.0,
            count=1,
            self_cpu_time_total=0.0,
        ),
    ]
    prof = SimpleNamespace(key_averages=lambda: events)
    assert profile_decode.kernel_times(prof, on_cuda=True) == ({"nvjet_sm90_tst_512x8": 498.0}, 1)
    assert profile_decode.kernel_times(prof, on_cuda=False) == ({"aten::mm": 20.0}, 1)
