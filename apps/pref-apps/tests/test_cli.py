"""pref-train / pref-sample / pref-eval as installed console scripts and in-process."""

from __future__ import annotations

import importlib.metadata as metadata
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import pref_apps
from pref_apps import registry, train

PROGRAMS = {
    "pref-train": registry.RECIPES,
    "pref-sample": registry.SAMPLERS,
    "pref-eval": registry.EVALUATORS,
}


def _script(name: str) -> str:
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    assert found is not None, f"console script {name} is not installed"
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_script(args[0]), *args[1:]], capture_output=True, text=True, timeout=120
    )


def test_console_scripts_are_declared():
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts["pref-train"] == "pref_apps.train:main"
    assert scripts["pref-sample"] == "pref_apps.sample:main"
    assert scripts["pref-eval"] == "pref_apps.evaluate:main"


@pytest.mark.parametrize("prog", sorted(PROGRAMS))
def test_help(prog: str):
    result = _run(prog, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {prog}")
    if prog != "pref-sample":  # pref-sample loads models; it has no registry
        assert PROGRAMS[prog] in result.stdout


@pytest.mark.parametrize("prog", sorted(PROGRAMS))
def test_version(prog: str):
    result = _run(prog, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{prog} {pref_apps.__version__}"


def test_ls_matches_installed_registrations():
    result = _run("pref-train", "ls")
    assert result.returncode == 0, result.stderr
    regs = registry.installed(registry.RECIPES)
    if not regs:
        assert "No recipes are installed" in result.stdout
    for name, reg in regs.items():
        assert any(
            line.startswith(name + " ") and line.endswith(f"[{reg.distribution} {reg.version}]")
            for line in result.stdout.splitlines()
        ), result.stdout


def test_unknown_recipe_with_known_prefix_names_its_package():
    result = _run("pref-train", "--recipe", "chats-no-such-recipe")
    assert result.returncode == 2
    assert "'chats-no-such-recipe'" in result.stderr
    assert "pref-chats" in result.stderr


def test_unknown_recipe_without_prefix_lists_available():
    result = _run("pref-train", "--recipe", "frobnicate")
    assert result.returncode == 2
    assert "'frobnicate'" in result.stderr
    assert "Installed recipes:" in result.stderr or "No recipes are installed" in result.stderr


@pytest.mark.parametrize("prog", ["pref-sample", "pref-eval"])
def test_called_without_arguments_exits_2(prog: str):
    result = _run(prog)
    assert result.returncode == 2
    assert result.stderr.strip()


def test_ls_with_none_installed(installed_entry_points, capsys):
    installed_entry_points([])
    assert train.main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "No recipes are installed" in out
    assert "pref.recipes" in out


def test_nothing_registered_explains_and_exits_2(installed_entry_points, capsys):
    installed_entry_points([])
    assert train.main([]) == 2
    assert "no recipes are registered yet" in capsys.readouterr().err


def test_ls_lists_name_and_distribution_and_survives_broken_plugins(
    make_dists, installed_entry_points, capsys
):
    eps = make_dists(
        ("fake-chats", "1.2", "[pref.recipes]\nchats-toy = module_that_does_not_exist:main\n"),
        ("fake-dspo", "0.3", "[pref.recipes]\ndspo-toy = another_missing_module:main\n"),
    )
    installed_entry_points(eps)
    assert train.main(["ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("chats-toy") and lines[0].endswith("[fake-chats 1.2]")
    assert lines[1].startswith("dspo-toy ") and lines[1].endswith("[fake-dspo 0.3]")
    assert "cannot be loaded" in lines[0]


def test_dpo_prefix_points_at_the_trainer(installed_entry_points, capsys):
    installed_entry_points([])
    assert train.main(["--recipe", "dpo-sd15"]) == 2
    err = capsys.readouterr().err
    assert "pref-apps" in err
    assert "Diffusion-DPO" in err


def test_missing_provider_says_what_to_install(installed_entry_points, monkeypatch, capsys):
    installed_entry_points([])
    monkeypatch.setattr(registry, "installed_version", lambda dist: None)
    assert train.main(["--recipe", "contrast-sdxl"]) == 2
    err = capsys.readouterr().err
    assert "pref-contrast" in err
    assert "not installed" in err
    assert "pip install ./packages/pref-contrast" in err


def test_unknown_name_lists_installed(make_dists, installed_entry_points, capsys):
    installed_entry_points(make_dists(("fake-img", "0.1", "[pref.recipes]\nimg-toy = m:f\n")))
    assert train.main(["--recipe", "frobnicate"]) == 2
    assert "Installed recipes: img-toy." in capsys.readouterr().err


def test_duplicate_names_exit_2_naming_both(make_dists, installed_entry_points, capsys):
    installed_entry_points(
        make_dists(
            ("fake-a", "0.1", "[pref.recipes]\nchats-x = fake_a:main\n"),
            ("fake-b", "0.2", "[pref.recipes]\nchats-x = fake_b:main\n"),
        )
    )
    assert train.main(["ls"]) == 2
    err = capsys.readouterr().err
    assert "fake-a 0.1 (fake_a:main)" in err
    assert "fake-b 0.2 (fake_b:main)" in err


def test_dispatch_passes_remaining_arguments(
    make_dists, installed_entry_points, tmp_path, monkeypatch
):
    module = tmp_path / "fake_recipe_module.py"
    module.write_text(
        "calls = []\n\ndef main(argv):\n    calls.append(list(argv))\n    return 7\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    installed_entry_points(
        make_dists(("fake-r", "0.1", "[pref.recipes]\nimg-toy = fake_recipe_module:main\n"))
    )
    assert train.main(["--recipe", "img-toy", "--lr", "1e-5", "data/", "--help"]) == 7
    import fake_recipe_module

    assert fake_recipe_module.calls == [["--lr", "1e-5", "data/", "--help"]]


def test_dispatch_accepts_equals_form_and_none_status(
    make_dists, installed_entry_points, tmp_path, monkeypatch
):
    (tmp_path / "fake_plain_recipe.py").write_text("def run(argv):\n    return None\n", "utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    installed_entry_points(
        make_dists(("fake-s", "0.1", "[pref.recipes]\nimg-x = fake_plain_recipe:run\n"))
    )
    assert train.main(["--recipe=img-x", "x"]) == 0


def test_ls_and_name_together_is_a_usage_error(capsys):
    assert train.main(["ls", "--recipe", "x"]) == 2
    assert "ls takes no --recipe" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "pref_apps.train", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: pref-train")
