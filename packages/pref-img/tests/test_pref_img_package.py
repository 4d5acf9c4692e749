import importlib.metadata

import pref_img


def test_version_matches_distribution_metadata():
    assert pref_img.__version__ == importlib.metadata.version("pref-img")


def test_depends_on_compatible_pref_core_range():
    requires = importlib.metadata.requires("pref-img") or []
    core = [r for r in requires if r.startswith("pref-core")]
    assert len(core) == 1 and core[0].startswith("pref-core[")
    assert "<0.2" in core[0] and ">=0.1" in core[0]


def test_recipes_and_sampler_are_registered():
    recipes = {ep.name for ep in importlib.metadata.entry_points(group="pref.recipes")}
    expected = {
        "img-flux",
        "img-sdxl",
        "img-mllm-llava",
        "img-mllm-qwen",
        "img-mllm-toy",
        "img-toy",
        "toy-ip-adapter",
    }
    assert expected <= recipes
    samplers = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pref.samplers")}
    assert samplers.get("img") == "pref_img.pipeline:load_img"


def test_import_loads_no_model_library():
    import subprocess
    import sys

    code = (
        "import sys, pref_img; "
        "print(sorted(m for m in ('diffusers', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
