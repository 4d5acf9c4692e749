import importlib.metadata

import pref_contrast


def test_version_matches_distribution_metadata():
    assert pref_contrast.__version__ == importlib.metadata.version("pref-contrast")


def test_depends_on_compatible_sibling_ranges():
    requires = importlib.metadata.requires("pref-contrast") or []
    core = [r for r in requires if r.startswith("pref-core")]
    data = [r for r in requires if r.startswith("pref-data")]
    # the CLIP embedder (transformers) and InstructPix2Pix (diffusers): core's diffusers extra;
    # the style datasets are written and read in the Pick-a-Pic schema: pref-data with parquet
    assert core in (["pref-core[diffusers]<0.2,>=0.1"], ["pref-core[diffusers]>=0.1,<0.2"])
    assert data in (["pref-data[hf]<0.2,>=0.1"], ["pref-data[hf]>=0.1,<0.2"])


def test_recipes_and_script_are_registered():
    names = {ep.name for ep in importlib.metadata.entry_points(group="pref.recipes")}
    expected = {
        "contrast-toy",
        "contrast-toy-flow",
        "contrast-sd15",
        "contrast-sd15-lora",
        "contrast-sdxl",
        "contrast-sdxl-lora",
        "contrast-flux",
        "contrast-flux-lora",
    }
    assert expected <= names
    for ep in importlib.metadata.entry_points(group="pref.recipes"):
        if ep.name in expected:
            recipe = ep.load()
            assert recipe.name == ep.name
            assert recipe.prepare_data is not None  # the embeddings
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert [ep.value for ep in scripts if ep.name == "pref-style-data"] == [
        "pref_contrast.style:main"
    ]
