"""Discovery of what installed pref packages register: recipes, samplers and evaluators.

Packages register objects in entry-point groups (``pref.recipes``, ``pref.samplers``,
``pref.evaluators``) in their ``pyproject.toml``::

    [project.entry-points."pref.recipes"]
    chats-sd15 = "pref_chats.recipes:sd15"

Discovery reads installed metadata only; nothing is imported until a registration is loaded.
"""

from __future__ import annotations

import importlib.metadata as metadata
from collections.abc import Iterable
from dataclasses import dataclass

RECIPES = "pref.recipes"
SAMPLERS = "pref.samplers"
EVALUATORS = "pref.evaluators"


@dataclass(frozen=True)
class PlannedProvider:
    """Which distribution provides the names starting with ``prefix``."""

    prefix: str
    distribution: str
    what: str


# Recipe names are namespaced by method; this maps a name to the package that provides it so an
# unknown name can be answered with "install X" rather than a bare "not found".
PLANNED_RECIPES: tuple[PlannedProvider, ...] = (
    PlannedProvider("dpo-", "pref-apps", "the Diffusion-DPO baseline"),
    PlannedProvider("toy-", "pref-apps", "the toy world's base models"),
    PlannedProvider("sft-", "pref-apps", "the supervised fine-tuning baseline"),
    PlannedProvider("chats-", "pref-chats", "CHATS"),
    PlannedProvider("dspo-", "pref-dspo", "DSPO"),
    PlannedProvider("contrast-", "pref-contrast", "Diff-contrast (Diffusion-RPO)"),
    PlannedProvider("img-", "pref-img", "IMG"),
)


@dataclass(frozen=True)
class Registration:
    """One name registered in an entry-point group, with the distribution that registered it."""

    name: str
    entry_point: metadata.EntryPoint
    distribution: str | None
    version: str | None

    @property
    def source(self) -> str:
        if self.distribution is None:
            return f"entry point {self.entry_point.value!r}"
        return f"{self.distribution} {self.version} ({self.entry_point.value})"


class DuplicateRegistrationError(LookupError):
    """The same name is registered by more than one distribution."""

    def __init__(self, group: str, duplicates: dict[str, list[Registration]]) -> None:
        self.group = group
        self.duplicates = duplicates
        lines = [f"conflicting registrations in entry-point group {group!r}:"]
        for name, regs in sorted(duplicates.items()):
            sources = " and ".join(r.source for r in regs)
            lines.append(f"  {name!r} is registered by {sources}")
        lines.append("Uninstall one of the distributions or rename one of the entry points.")
        super().__init__("\n".join(lines))


def _registration(ep: metadata.EntryPoint) -> Registration:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return Registration(ep.name, ep, None, None)
    return Registration(ep.name, ep, dist.name, dist.version)


def index(entry_points: Iterable[metadata.EntryPoint], group: str) -> dict[str, Registration]:
    """Map each registered name to its registration.

    Raises :class:`DuplicateRegistrationError` naming every distribution involved when a name is
    registered more than once with different providers (the same distribution seen twice with the
    same target is not a conflict).
    """
    found: dict[str, list[Registration]] = {}
    for ep in entry_points:
        if ep.group != group:
            continue
        reg = _registration(ep)
        regs = found.setdefault(reg.name, [])
        if all((r.distribution, r.entry_point.value) != (reg.distribution, ep.value) for r in regs):
            regs.append(reg)
    duplicates = {name: regs for name, regs in found.items() if len(regs) > 1}
    if duplicates:
        raise DuplicateRegistrationError(group, duplicates)
    return {name: regs[0] for name, regs in found.items()}


def installed(group: str) -> dict[str, Registration]:
    """Registrations of the installed distributions in ``group`` (nothing is imported)."""
    return index(metadata.entry_points(group=group), group)


def planned_provider(
    name: str, planned: Iterable[PlannedProvider] = PLANNED_RECIPES
) -> PlannedProvider | None:
    """The provider whose prefix ``name`` starts with, if any."""
    for provider in planned:
        if name.startswith(provider.prefix):
            return provider
    return None


def installed_version(distribution: str) -> str | None:
    """Version of an installed distribution, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
