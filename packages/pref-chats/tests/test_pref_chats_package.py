import importlib.metadata

import pref_chats


def test_version_matches_distribution_metadata():
    assert pref_chats.__version__ == importlib.metadata.version("pref-chats")


def test_depends_on_compatible_pref_core_range():
    requires = importlib.metadata.requires("pref-chats") or []
    core = [r for r in requires if r.startswith("pref-core")]
    # CHATS samples real pipelines and trains LoRA pairs: core's diffusers and peft extras
    assert core in (
        ["pref-core[diffusers,peft]<0.2,>=0.1"],
        ["pref-core[diffusers,peft]>=0.1,<0.2"],
    )


def test_recipes_and_loader_are_registered():
    names = {ep.name for ep in importlib.metadata.entry_points(group="pref.recipes")}
    expected = {
        "chats-toy",
        "chats-toy-flow",
        "chats-sd15",
        "chats-sd15-lora",
        "chats-sdxl",
        "chats-sdxl-lora",
        "chats-flux",
        "chats-flux-lora",
    }
    assert expected <= names
    loaders = importlib.metadata.entry_points(group="pref.samplers")
    assert [ep.value for ep in loaders if ep.name == "chats"] == ["pref_chats.pair:load_pair"]
    for ep in importlib.metadata.entry_points(group="pref.recipes"):
        if ep.name in expected:
            recipe = ep.load()
            assert recipe.name == ep.name
            assert recipe.policies == ("preferred", "dispreferred")
