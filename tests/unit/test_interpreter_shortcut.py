"""The tests' faster Triton interpreter (tests/interpreter_shortcut.py) computes what Triton's own does,
bit for bit, and really skips the patching it claims to skip."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1", reason="Triton's CPU interpreter"
)


def test_the_shortcut_gives_tritons_own_results_with_less_patching(monkeypatch):
    from triton.runtime import interpreter

    from gemma_runtime.kernels.rms_norm import fused_ffn_prologue
    from tests import interpreter_shortcut

    assert getattr(interpreter.GridExecutor.__call__, "_shortcut", False), "conftest installs the shortcut"
    patches = []
    real_patch_lang = interpreter._patch_lang
    monkeypatch.setattr(interpreter, "_patch_lang", lambda fn: patches.append(fn) or real_patch_lang(fn))
    g = torch.Generator().manual_seed(0)
    h, residual = torch.randn(16, 64, generator=g), torch.randn(16, 64, generator=g)
    w_post, w_pre = torch.randn(64, generator=g), torch.randn(64, generator=g)

    def run() -> tuple:
        patches.clear()
        out = fused_ffn_prologue(h, residual, w_post, w_pre, 1e-6)
        outs = out if isinstance(out, tuple) else (out,)
        return tuple(t.clone() for t in outs if t is not None), len(patches)

    fast, fast_patches = run()
    with monkeypatch.context() as m:  # Triton's own launch and helper calls
        m.setattr(interpreter.GridExecutor, "__call__", interpreter.GridExecutor.__call__.__wrapped__)
        m.setattr(interpreter.InterpretedFunction, "__call__", interpreter_shortcut.tritons_helper_call)
        own, own_patches = run()
    assert all(torch.equal(a, b) for a, b in zip(fast, own, strict=True))
    assert fast_patches <= 2 < 16 <= own_patches  # one launch (plus tl.core's first helper) against one per program
