"""Entry-point indexing: duplicates are errors that name every provider."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from pref_apps import registry


def test_index_maps_names_to_registrations():
    eps = [
        EntryPoint(name="chats-sd15", value="pref_chats.recipes:sd15", group=registry.RECIPES),
        EntryPoint(name="dspo-sd15", value="pref_dspo.recipes:sd15", group=registry.RECIPES),
        EntryPoint(name="toy", value="pref_img.sample:toy", group=registry.SAMPLERS),
    ]
    regs = registry.index(eps, registry.RECIPES)
    assert sorted(regs) == ["chats-sd15", "dspo-sd15"]
    assert regs["chats-sd15"].entry_point.value == "pref_chats.recipes:sd15"


def test_duplicate_fake_entry_points_name_both_targets():
    eps = [
        EntryPoint(name="chats-sd15", value="pref_chats.recipes:sd15", group=registry.RECIPES),
        EntryPoint(name="chats-sd15", value="other_pkg.recipes:sd15", group=registry.RECIPES),
    ]
    with pytest.raises(registry.DuplicateRegistrationError) as exc:
        registry.index(eps, registry.RECIPES)
    message = str(exc.value)
    assert "'chats-sd15'" in message
    assert "pref_chats.recipes:sd15" in message
    assert "other_pkg.recipes:sd15" in message
    assert list(exc.value.duplicates) == ["chats-sd15"]


def test_duplicate_across_distributions_names_both(make_dists):
    eps = make_dists(
        ("pref-chats-fork", "0.1.0", "[pref.recipes]\nchats-sd15 = fork.recipes:sd15\n"),
        ("pref-chats-real", "0.1.0", "[pref.recipes]\nchats-sd15 = real.recipes:sd15\n"),
    )
    with pytest.raises(registry.DuplicateRegistrationError) as exc:
        registry.index(eps, registry.RECIPES)
    assert "pref-chats-fork 0.1.0" in str(exc.value)
    assert "pref-chats-real 0.1.0" in str(exc.value)


def test_same_target_seen_twice_is_not_a_conflict():
    ep = EntryPoint(name="img-sd15", value="pref_img.recipes:sd15", group=registry.RECIPES)
    same = EntryPoint(name="img-sd15", value="pref_img.recipes:sd15", group=registry.RECIPES)
    assert list(registry.index([ep, same], registry.RECIPES)) == ["img-sd15"]


@pytest.mark.parametrize(
    ("name", "dist"),
    [
        ("dpo-sd15", "pref-apps"),
        ("chats-sdxl", "pref-chats"),
        ("dspo-sd15", "pref-dspo"),
        ("contrast-sd15", "pref-contrast"),
        ("img-flux", "pref-img"),
    ],
)
def test_planned_provider_by_prefix(name: str, dist: str):
    provider = registry.planned_provider(name)
    assert provider is not None
    assert provider.distribution == dist


def test_unplanned_name_has_no_provider():
    assert registry.planned_provider("frobnicate") is None


def test_installed_version():
    assert registry.installed_version("pref-apps") is not None
    assert registry.installed_version("surely-not-an-installed-distribution-xyz") is None
