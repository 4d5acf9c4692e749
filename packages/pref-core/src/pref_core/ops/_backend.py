"""Backend selection for the fused ops.

Every public op takes ``backend: str | None``:

* ``None``: read the environment variable ``PREF_CORE_KERNELS`` (default ``"auto"``).
* ``"auto"``: the Triton kernel when every tensor is a CUDA tensor and ``triton`` imports; the
  exact PyTorch fallback otherwise, without a warning (CPU runs and machines without the
  ``pref-core[triton]`` extra are normal, not errors).
* ``"triton"``: the Triton kernel, or a ``RuntimeError`` that says why it cannot run and how to fix
  it. CPU tensors run through the Triton interpreter when ``TRITON_INTERPRET=1`` was set before
  triton was imported; that is how the test suite exercises the kernels without a GPU.
* ``"torch"``: the PyTorch fallback.

Nothing here imports triton unless a Triton path is being considered for CUDA tensors or was
asked for explicitly, so ``import pref_core.ops`` stays free of the optional dependency.
"""

from __future__ import annotations

import functools
import os
import sys

import torch

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "available_backends",
    "interpret_mode",
    "requested_backend",
    "resolve_backend",
    "triton_import_error",
]

ENV_VAR = "PREF_CORE_KERNELS"
BACKENDS = ("auto", "triton", "torch")

# The spellings triton itself accepts as true for TRITON_INTERPRET (triton.knobs.env_bool).
_TRUTHY = frozenset({"1", "true", "yes", "on", "y"})


def _env_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUTHY


def _imported_triton_mode() -> bool | None:
    """The mode triton was imported in: True (interpreter), False (compiler), or None when
    triton is not imported yet (or the mode cannot be told).

    triton builds its own ``@triton.jit`` library functions (``tl.sum``, ``tl.zeros``, ...) for
    the interpreter or the compiler when it is first imported, according to ``TRITON_INTERPRET``
    at that moment; kernels of the other mode cannot call them. So once triton is imported, its
    mode is fixed for the process, whatever the variable says later. Looked up through
    ``sys.modules`` so that asking never imports anything.
    """
    std = sys.modules.get("triton.language.standard")
    if sys.modules.get("triton") is None or std is None:
        return None
    probe = getattr(std, "sum", None)
    interpreter = sys.modules.get("triton.runtime.interpreter")
    if interpreter is not None and isinstance(probe, interpreter.InterpretedFunction):
        return True
    jit = sys.modules.get("triton.runtime.jit")
    if jit is not None and isinstance(probe, jit.JITFunction):
        return False
    return None


def interpret_mode() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``).

    Before triton is imported this is the environment variable; afterwards it is the mode triton
    was imported in (see :func:`_imported_triton_mode`).
    """
    mode = _imported_triton_mode()
    return _env_interpret() if mode is None else mode


@functools.cache
def triton_import_error() -> str | None:
    """``None`` when ``import triton`` works, else the import error as text (cached)."""
    try:
        import triton.language  # noqa: F401  (imports triton itself as well)
    except Exception as exc:  # any failure (missing, broken install) means "not usable"
        return f"{type(exc).__name__}: {exc}"
    return None


def available_backends() -> tuple[str, ...]:
    """The concrete backends that can run on this machine right now.

    ``"torch"`` always; ``"triton"`` when triton imports and there is a CUDA device or the
    interpreter is enabled (``TRITON_INTERPRET=1``).
    """
    names = ["torch"]
    if (torch.cuda.is_available() or interpret_mode()) and triton_import_error() is None:
        names.append("triton")
    return tuple(names)


def requested_backend(backend: str | None) -> str:
    """Normalise a backend argument (``None`` -> ``$PREF_CORE_KERNELS`` -> ``"auto"``)."""
    source = "backend"
    if backend is None:
        backend = os.environ.get(ENV_VAR, "auto")
        source = f"environment variable {ENV_VAR}"
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str or None, got {type(backend).__name__}")
    name = backend.strip().lower()
    if name not in BACKENDS:
        valid = ", ".join(repr(b) for b in BACKENDS)
        raise ValueError(f"unknown kernel backend {backend!r} (from {source}); valid: {valid}")
    return name


def resolve_backend(backend: str | None, *tensors: torch.Tensor) -> str:
    """Pick ``"triton"`` or ``"torch"`` for an op whose tensor arguments are ``tensors``.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` when ``"triton"`` was asked
    for explicitly but cannot run.
    """
    name = requested_backend(backend)
    if name == "torch":
        return "torch"
    all_cuda = all(t.is_cuda for t in tensors)
    if name == "auto":
        usable = all_cuda and triton_import_error() is None and _mode_conflict() is None
        return "triton" if usable else "torch"

    error = triton_import_error()
    if error is not None:
        raise RuntimeError(
            f"backend='triton' was requested but triton cannot be imported ({error}). "
            "Install the optional extra with `pip install 'pref-core[triton]'`, or use "
            f"backend='auto' / backend='torch' (or set {ENV_VAR}=auto)."
        )
    conflict = _mode_conflict()
    if conflict is not None:
        raise RuntimeError(f"backend='triton' was requested, but {conflict}")
    if not all_cuda and not interpret_mode():
        devices = ", ".join(sorted({str(t.device) for t in tensors}))
        raise RuntimeError(
            f"backend='triton' was requested for tensors on {devices}, but compiled Triton "
            "kernels need CUDA tensors. Move the tensors to a GPU, set TRITON_INTERPRET=1 (before "
            "triton is first imported) to run the kernels on CPU tensors in the Triton "
            "interpreter (slow; meant for tests), or use backend='torch'."
        )
    return "triton"


def _mode_conflict() -> str | None:
    """Why triton cannot run because ``TRITON_INTERPRET`` changed after triton was imported."""
    imported = _imported_triton_mode()
    if imported is None or imported == _env_interpret():
        return None
    if imported:
        return (
            "triton was imported with TRITON_INTERPRET=1 and the variable has been unset since; "
            "triton cannot switch from the interpreter to the compiler within a process. Keep "
            "TRITON_INTERPRET=1 for this process, or use backend='torch'."
        )
    return (
        "TRITON_INTERPRET=1 is set while triton had already been imported without it, and "
        "triton fixes its mode at import. Set TRITON_INTERPRET=1 before triton is first imported "
        "(in the shell, or at the very top of the script or conftest), or use backend='torch'."
    )
