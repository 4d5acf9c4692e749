import importlib.metadata

import pref_img


def test_version_matches_distribution_metadata():
    assert pref_img.__version__ == importlib.metadata.version("pref-img")


def test_depends_on_compatible_pref_core_range():
    requires = importlib.metadata.requires("pref-img") or []
    core = [r for r in requires if r.startswith("pref-core")]
    assert len(core) == 1 and core[0].startswith("pref-core[")
    assert "<0.2" in core[0] and ">=0.1" in core[0]
