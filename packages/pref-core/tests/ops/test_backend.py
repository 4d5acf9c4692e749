"""Backend selection: names, the environment variable, and the errors that say how to fix them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from pref_core.ops import _backend, available_backends, dspo_residual, resolve_backend


def _dspo_inputs():
    return torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3), torch.rand(2)


def _grad_fn_name(backend=None):
    pred, target, reference, weight = _dspo_inputs()
    out = dspo_residual(pred.requires_grad_(), target, reference, weight, backend=backend)
    return out.grad_fn.name()  # e.g. "DSPOResidualFunctionBackward"


def _fake_cuda_tensor():
    # resolve_backend only looks at .is_cuda / .device, so "auto" can be tested without a GPU.
    return SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))


@pytest.fixture
def no_triton(monkeypatch):
    """Pretend triton is not installed (a None entry in sys.modules makes the import fail)."""
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    _backend.triton_import_error.cache_clear()
    yield
    _backend.triton_import_error.cache_clear()


def _run_python(code: str, env_updates: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for key, value in env_updates.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_unknown_backend_raises_with_valid_names():
    with pytest.raises(
        ValueError, match=r"unknown kernel backend 'cuda'.*'auto', 'triton', 'torch'"
    ):
        dspo_residual(*_dspo_inputs(), backend="cuda")


def test_unknown_backend_in_env_var_names_the_variable(monkeypatch):
    monkeypatch.setenv("PREF_CORE_KERNELS", "fast")
    with pytest.raises(ValueError, match="PREF_CORE_KERNELS"):
        dspo_residual(*_dspo_inputs())


def test_backend_names_are_case_insensitive():
    assert resolve_backend(" Torch ", torch.zeros(1)) == "torch"


def test_auto_on_cpu_is_torch():
    assert resolve_backend("auto", torch.zeros(1)) == "torch"
    assert resolve_backend(None, torch.zeros(1)) == "torch"
    assert _grad_fn_name("auto") == "DSPOResidualFunctionBackward"


def test_auto_on_cpu_is_torch_even_with_the_interpreter(interpret):
    # The interpreter is for tests; "auto" only picks Triton for CUDA tensors.
    assert resolve_backend("auto", torch.zeros(1)) == "torch"


def test_auto_picks_triton_for_cuda_tensors_when_triton_imports():
    pytest.importorskip("triton")
    expected = "torch" if _backend._mode_conflict() else "triton"
    assert resolve_backend("auto", _fake_cuda_tensor(), _fake_cuda_tensor()) == expected
    # One CPU tensor among CUDA ones: not a Triton launch.
    assert resolve_backend("auto", _fake_cuda_tensor(), torch.zeros(1)) == "torch"


def test_auto_without_triton_is_torch_quietly(no_triton, recwarn):
    assert resolve_backend("auto", _fake_cuda_tensor()) == "torch"
    assert len(recwarn) == 0
    assert available_backends() == ("torch",)


def test_explicit_triton_without_triton_says_how_to_install(no_triton):
    with pytest.raises(RuntimeError, match=r"pip install 'pref-core\[triton\]'"):
        dspo_residual(*_dspo_inputs(), backend="triton")


def test_env_var_selects_backend(monkeypatch):
    monkeypatch.setenv("PREF_CORE_KERNELS", "torch")
    assert resolve_backend(None, _fake_cuda_tensor()) == "torch"
    assert _grad_fn_name() == "DSPOResidualFunctionBackward"


def test_env_var_triton_uses_the_kernel(interpret, monkeypatch):
    monkeypatch.setenv("PREF_CORE_KERNELS", "triton")
    assert _grad_fn_name() == "DSPOResidualTritonBackward"
    # An explicit argument wins over the environment.
    assert _grad_fn_name("torch") == "DSPOResidualFunctionBackward"


def test_available_backends():
    names = available_backends()
    assert names[0] == "torch"
    assert set(names) <= {"torch", "triton"}


def test_available_backends_lists_triton_under_the_interpreter(interpret):
    assert "triton" in available_backends()


def test_explicit_triton_on_cpu_without_interpreter_raises_helpful_error():
    # A fresh process without TRITON_INTERPRET: this session's triton may already be imported
    # in interpreter mode, and triton cannot change modes after import.
    pytest.importorskip("triton")
    result = _run_python(
        """
        import torch
        from pref_core.ops import paired_errors
        xs = [torch.randn(2, 3) for _ in range(6)]
        try:
            paired_errors(*xs, backend="triton")
        except RuntimeError as exc:
            print("RuntimeError:", exc)
        """,
        {"TRITON_INTERPRET": None, "PREF_CORE_KERNELS": None},
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert "RuntimeError:" in message
    assert "need CUDA tensors" in message
    assert "TRITON_INTERPRET=1" in message
    assert "backend='torch'" in message


def test_interpreter_enabled_after_triton_import_is_reported():
    pytest.importorskip("triton")
    result = _run_python(
        """
        import os
        import torch
        import triton  # imported in compiled mode ...
        os.environ["TRITON_INTERPRET"] = "1"  # ... so this comes too late
        from pref_core.ops import noise_and_target
        x = torch.randn(2, 3)
        try:
            noise_and_target(x, x, 1.0, 0.0, 0.0, 1.0, backend="triton")
        except RuntimeError as exc:
            print("RuntimeError:", exc)
        """,
        {"TRITON_INTERPRET": None, "PREF_CORE_KERNELS": None},
    )
    assert result.returncode == 0, result.stderr
    assert "before triton is first imported" in result.stdout


def test_import_does_not_import_triton():
    result = _run_python(
        """
        import json, sys
        import pref_core.ops
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "triton")))
        """,
        {},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
