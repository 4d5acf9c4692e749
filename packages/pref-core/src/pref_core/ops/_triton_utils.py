"""Triton helpers for the kernel modules.

Importing this module imports triton; only the ``triton_kernel`` modules import it, and those are
imported lazily by the op wrappers once the Triton backend has been chosen.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from pref_core.ops._backend import interpret_mode

__all__ = ["LazyJit", "lazy_jit", "tl_dtype"]


def _jit(fn: Any, interpret: bool) -> Any:
    """``triton.jit(fn)`` for the given mode, whatever ``TRITON_INTERPRET`` says right now."""
    try:
        if interpret:
            from triton.runtime.interpreter import InterpretedFunction

            return InterpretedFunction(fn)
        from triton.runtime.jit import JITFunction

        return JITFunction(fn)
    except ImportError:  # layout of a triton version we do not know: let triton decide
        return triton.jit(fn)


class LazyJit:
    """A kernel function jitted at its first launch, for the mode triton is running in.

    ``triton.jit`` would pick interpreter vs compiler from ``TRITON_INTERPRET`` at decoration
    time, i.e. whenever this module happened to be imported. But triton's own library functions
    (``tl.sum``, ``tl.zeros``) were built for the mode that was active when *triton* was
    imported, and a kernel of the other mode cannot call them. Deferring the decoration to the
    launch and following :func:`pref_core.ops._backend.interpret_mode` keeps the two in step.
    """

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.__name__ = fn.__name__
        self._jitted: dict[bool, Any] = {}

    def __getitem__(self, grid: Any) -> Any:
        mode = interpret_mode()
        kernel = self._jitted.get(mode)
        if kernel is None:
            kernel = self._jitted[mode] = _jit(self.fn, mode)
        return kernel[grid]


def lazy_jit(fn: Any) -> LazyJit:
    return LazyJit(fn)


def tl_dtype(dtype: torch.dtype) -> Any:
    """The Triton dtype for an accumulation dtype (float32 or float64)."""
    return {torch.float32: tl.float32, torch.float64: tl.float64}[dtype]
