"""A faster Triton CPU interpreter for the tests: same kernels, same arithmetic, less bookkeeping.

Triton's interpreter (`TRITON_INTERPRET=1`) patches `triton.language` for the interpreter at each launch
and undoes it when the launch ends. It also re-runs that patching at every call of a `@triton.jit` helper
from inside a kernel (InterpretedFunction.__call__), once per program: `inspect.getmembers` over
`tl`, `tl.tensor` and `tl.math` each time. Inside a launch that already patched the same modules it
changes nothing (every builtin is already replaced, and `_patch_builtin` only replaces builtins), yet it
was a third of the interpreter's time in the decode-path tests: `_patch_builtin` 67 of 197 profiled
seconds in tests/gpu/test_decode_path.py::test_image_prompts_with_the_triton_kernels, 288,533 calls.

`install()` skips only that no-op: a helper call whose `triton.language` modules are already patched
calls the rewritten helper directly; any other call takes Triton's own path. Already patched: by the
running launch, or for good by an earlier helper call. Triton never undoes a helper call's patching, so a
helper of `tl.math` (whose module sees `tl.core`, which a launch does not patch) leaves `tl.core` patched
from its first call on. Launches, and helpers seen outside a launch, are untouched. Where Triton's interpreter is not laid out as expected
(another version), nothing is changed and the tests run at Triton's own speed.
"""

from __future__ import annotations

tritons_helper_call = None  # Triton's own InterpretedFunction.__call__, once install() replaced it
_launch_langs: list[frozenset[int]] = []  # the triton.language modules each running launch patched
_patched_for_good: set[int] = set()  # those a helper call patched (Triton drops that patching's undo)


def _langs(fn, tl) -> frozenset[int]:
    # the modules Triton's _patch_lang patches for `fn`: tl and tl.core where fn's globals see them
    return frozenset(id(v) for v in fn.__globals__.values() if v is tl or v is tl.core)


def install() -> bool:
    """Apply the shortcut; False (and nothing changed) where this Triton's interpreter differs."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return False
    names = ("GridExecutor", "InterpretedFunction", "_patch_lang", "InterpreterError")
    if not all(hasattr(interpreter, name) for name in names):
        return False
    grid_call, helper_call = interpreter.GridExecutor.__call__, interpreter.InterpretedFunction.__call__
    if getattr(grid_call, "_shortcut", False):
        return False

    def launch(self, *args, **kwargs):
        _launch_langs.append(_langs(self.fn, tl))
        try:
            return grid_call(self, *args, **kwargs)
        finally:
            _launch_langs.pop()

    def helper(self, *args, **kwargs):
        if not _launch_langs:
            return helper_call(self, *args, **kwargs)
        langs = _langs(self.fn, tl)
        if not langs <= _launch_langs[-1] | _patched_for_good:
            _patched_for_good.update(langs)
            return helper_call(self, *args, **kwargs)
        fn = self.rewrite()  # Triton's own body without the patching, which would change nothing here
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise interpreter.InterpreterError(repr(e)) from e

    global tritons_helper_call
    tritons_helper_call = helper_call
    launch._shortcut = True
    launch.__wrapped__ = grid_call
    interpreter.GridExecutor.__call__ = launch
    interpreter.InterpretedFunction.__call__ = helper
    return True
