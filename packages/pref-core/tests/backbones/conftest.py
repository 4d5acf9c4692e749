"""Tiny pipelines in the real Hub layout, built once per session from configs (no downloads)."""

import importlib.util

import pytest

# The backbones are the pref-core[diffusers,peft] extras: without them (nox's isolated `core`
# session) this folder is not collected at all.
if any(importlib.util.find_spec(m) is None for m in ("diffusers", "transformers", "peft")):
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory):
    from pref_core.backbones.tiny_sd import build_tiny_sd15

    return build_tiny_sd15(tmp_path_factory.mktemp("tiny-sd15"), seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    from pref_core.backbones.tiny_sd import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"), seed=0)


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory):
    from pref_core.backbones.tiny_flux import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("tiny-flux"), seed=0)


@pytest.fixture(params=["sd15", "sdxl", "flux"])
def tiny_dir(request):
    return request.getfixturevalue(f"tiny_{request.param}_dir")
