"""Shared fixtures for the fused-op tests.

How the Triton kernels are exercised without a GPU: with ``TRITON_INTERPRET=1`` Triton runs
kernels in its CPU interpreter. Triton fixes that mode when it is first imported (its own
``tl.sum``/``tl.zeros`` are built for one mode only), so the variable must be set before anything
imports triton; setting it per test is too late once triton is loaded. This conftest therefore
sets it at import time, on machines without CUDA only, and only if the caller has not set it. On
a GPU machine the same "triton" tests run the compiled kernels on CUDA tensors instead (see the
``device`` fixture), unless the session was started with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

# The repository's root conftest.py sets TRITON_INTERPRET=1 before any test module (and with it
# diffusers, which imports triton) is collected; setting it here as well covers running these
# tests from outside the repository's pytest configuration.
if importlib.util.find_spec("triton") is not None and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHAPES = [(2, 4, 8, 8), (3, 4, 17, 9), (1, 16), (5, 1, 1, 1)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# Elementwise outputs/gradients in the input dtype: fp32 tight; bf16/fp16 allow one rounding step
# of the output (the reference sees the same low-precision inputs upcast to fp32, so nothing else
# differs). The Triton interpreter rounds fp32 -> bf16 toward zero rather than to nearest, which
# also stays within one bf16 ulp (2^-8 relative).
ELEMENTWISE_TOL = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-5},
    torch.float16: {"rtol": 1e-3, "atol": 1e-5},
}
# Per-sample reductions are float32 whatever the input dtype; only the summation order differs.
REDUCTION_TOL = {"rtol": 1e-5, "atol": 1e-6}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gpu: needs a CUDA GPU (runs the compiled Triton kernels); skipped otherwise"
    )


def _triton_device() -> torch.device:
    """Where the Triton backend can run in this session: CPU tensors through the interpreter,
    or CUDA tensors through compiled kernels. Skips the test when neither is possible."""
    pytest.importorskip("triton")
    from pref_core.ops._backend import interpret_mode, resolve_backend, triton_import_error

    if triton_import_error() is not None:
        pytest.skip(f"triton does not import: {triton_import_error()}")
    if interpret_mode():
        return torch.device("cpu")
    if torch.cuda.is_available():
        resolve_backend("triton", torch.empty(0, device="cuda"))  # raises on a mode conflict
        return torch.device("cuda")
    # triton is installed but unusable here: a configuration error, never a quiet skip.
    pytest.fail(
        "triton was imported without TRITON_INTERPRET=1 and there is no GPU; run the tests "
        "with TRITON_INTERPRET=1 set before triton is imported"
    )


@pytest.fixture(params=SHAPES, ids=lambda s: "x".join(map(str, s)))
def shape(request: pytest.FixtureRequest) -> tuple[int, ...]:
    """Representative (B, ...) shapes: image latents, odd sizes that are no multiple of a tile,
    a flat (B, D) layout and one element per sample."""
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


@pytest.fixture(params=["torch", "triton"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each implementation under test: the torch fallback always; Triton when it can run."""
    if request.param == "triton":
        _triton_device()
    return request.param


@pytest.fixture
def device(backend: str) -> torch.device:
    """The device the tests of ``backend`` put their tensors on."""
    return _triton_device() if backend == "triton" else torch.device("cpu")


@pytest.fixture
def interpret() -> None:
    """For tests that drive the Triton kernels on CPU tensors specifically."""
    if _triton_device().type != "cpu":
        pytest.skip("needs the Triton interpreter (TRITON_INTERPRET=1)")


@pytest.fixture
def cuda() -> torch.device:
    """A CUDA device with compiled (not interpreted) Triton kernels; skip without a GPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if _triton_device().type != "cuda":
        pytest.skip("this session runs Triton in the interpreter (TRITON_INTERPRET=1)")
    return torch.device("cuda")


@pytest.fixture(autouse=True)
def _hermetic_backend_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A PREF_CORE_KERNELS exported by the caller's shell must not change what "auto" means here.
    monkeypatch.delenv("PREF_CORE_KERNELS", raising=False)


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch):
    """Shrink the launch geometry so small test shapes span many tiles and segments.

    With the default 1024-element tiles every test shape fits in one tile, which would leave the
    multi-tile loops and the cross-segment partial sums untested.
    """
    from pref_core.ops import _utils

    def apply(max_block: int, target_programs: int) -> None:
        monkeypatch.setattr(_utils, "MAX_BLOCK", max_block)
        monkeypatch.setattr(_utils, "TARGET_PROGRAMS", target_programs)

    return apply


def assert_close(actual, expected, dtype: torch.dtype, *, reduction: bool = False) -> None:
    """Compare in float32 with the tolerance for ``dtype`` (see the tables above)."""
    tol = REDUCTION_TOL if reduction else ELEMENTWISE_TOL[dtype]
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), **tol)


@pytest.fixture
def close():
    """The :func:`assert_close` helper, as a fixture (test modules are not importable)."""
    return assert_close


class SavedTensorRecorder:
    """Records every tensor autograd saves for backward (``saved_tensors_hooks``)."""

    def __init__(self) -> None:
        self.saved: list[torch.Tensor] = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.saved.append(t)
        return t

    def __enter__(self) -> SavedTensorRecorder:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def full_size_non_inputs(self, inputs, batch: int) -> list[tuple[int, ...]]:
        """Shapes of saved tensors that are neither inputs nor per-sample-sized (<= 4 * B)."""
        input_ptrs = {t.data_ptr() for t in inputs}
        return [
            tuple(t.shape)
            for t in self.saved
            if t.data_ptr() not in input_ptrs and t.numel() > 4 * batch
        ]


@pytest.fixture
def saved_tensors():
    return SavedTensorRecorder
