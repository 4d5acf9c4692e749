"""Workspace-wide pytest hooks (pytest's rootdir is the repository root, see pyproject.toml)."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys

import pytest


def _enable_triton_interpreter() -> None:
    """Run Triton kernels in Triton's CPU interpreter on machines without CUDA.

    Triton fixes interpreter mode when it is first imported, and diffusers (imported by the
    backbone tests, which are collected before the kernel tests) imports it. This conftest is
    loaded before any test module, so the variable is set in time. A value the caller set wins.
    """
    if "TRITON_INTERPRET" in os.environ or "triton" in sys.modules:
        return
    if importlib.util.find_spec("triton") is None or _cuda_available():
        return
    os.environ["TRITON_INTERPRET"] = "1"


@functools.cache
def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip themselves where torch sees no CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False")
        for item in gpu_items:
            item.add_marker(skip)


_enable_triton_interpreter()
