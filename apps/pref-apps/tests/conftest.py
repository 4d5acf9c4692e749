from __future__ import annotations

import importlib.metadata as metadata
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest


def _write_dist(root: Path, name: str, version: str, entry_points: str) -> None:
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points), encoding="utf-8")


@pytest.fixture
def make_dists(tmp_path: Path) -> Callable[..., list[metadata.EntryPoint]]:
    """Create real distributions (dist-info folders) in a temp dir; return their entry points.

    Each argument is ``(name, version, entry_points_txt)``. The entry points carry their
    distribution, exactly as ``importlib.metadata.entry_points()`` returns them.
    """

    def make(*dists: tuple[str, str, str]) -> list[metadata.EntryPoint]:
        root = tmp_path / "site"
        for name, version, eps in dists:
            _write_dist(root, name, version, eps)
        return [ep for d in metadata.distributions(path=[str(root)]) for ep in d.entry_points]

    return make


@pytest.fixture
def installed_entry_points(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make ``importlib.metadata.entry_points`` see exactly the given entry points."""

    def install(eps: list[metadata.EntryPoint]) -> None:
        def fake(**params: str) -> list[metadata.EntryPoint]:
            group = params.get("group")
            return [ep for ep in eps if group is None or ep.group == group]

        monkeypatch.setattr(metadata, "entry_points", fake)

    return install
