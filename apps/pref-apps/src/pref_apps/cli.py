"""Shared command-line logic of pref-train, pref-sample and pref-eval.

Each program serves one entry-point group:

* ``PROG ls`` lists the registered names and the distributions providing them (no imports);
* ``PROG --OPTION NAME [ARGS ...]`` loads the callable registered as NAME and calls it with the
  remaining arguments; a registered callable has the signature ``main(argv: list[str]) -> int |
  None`` and its return value is the exit status;
* an unknown NAME, no registrations at all, or a name registered twice exits with status 2 and a
  message saying what to install or uninstall.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from pref_apps import __version__, registry

USAGE_ERROR = 2


@dataclass(frozen=True)
class Program:
    prog: str
    noun: str
    plural: str
    group: str
    option: str
    description: str
    planned: tuple[registry.PlannedProvider, ...] = ()


def _parser(program: Program) -> argparse.ArgumentParser:
    meta = program.noun.upper()
    width = max((len(p.prefix) + 1 for p in program.planned), default=0)
    planned = "".join(
        f"\n  {p.prefix + '*':<{width}}  {p.distribution}: {p.what}" for p in program.planned
    )
    epilog = (
        f"{program.plural.capitalize()} are registered by installed pref packages in the "
        f"entry-point group {program.group!r}."
    )
    if planned:
        epilog += f"\n\n{program.noun.capitalize()} names by providing package:{planned}"
    parser = argparse.ArgumentParser(
        prog=program.prog,
        usage=f"{program.prog} [-h] [--version] (ls | {program.option} {meta} [ARGS ...])",
        description=program.description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=["ls"],
        help=f"ls: list the installed {program.plural} and their packages without importing them",
    )
    parser.add_argument(
        program.option,
        dest="name",
        metavar=meta,
        help=f"run the {program.noun} registered as {meta}; "
        f"the arguments after {meta} are passed to it unchanged",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _split(argv: list[str], option: str) -> tuple[list[str], list[str]]:
    """Split argv after ``OPTION NAME``: what follows belongs to the selected callable."""
    for i, arg in enumerate(argv):
        if arg == option:
            return argv[: i + 2], argv[i + 2 :]
        if arg.startswith(option + "="):
            return argv[: i + 1], argv[i + 1 :]
    return argv, []


def _err(program: Program, message: str) -> None:
    print(f"{program.prog}: {message}", file=sys.stderr)


def _list(program: Program, regs: dict[str, registry.Registration]) -> int:
    if not regs:
        print(
            f"No {program.plural} are installed (entry-point group {program.group!r} is empty). "
            f"The pref packages register them as their methods land."
        )
        return 0
    width = max(len(name) for name in regs)
    for name in sorted(regs):
        reg = regs[name]
        provider = reg.distribution or "?"
        version = f" {reg.version}" if reg.version else ""
        print(f"{name:<{width}}  {provider}{version}")
    return 0


def _unknown(program: Program, name: str, regs: dict[str, registry.Registration]) -> int:
    lines = [f"no {program.noun} named {name!r} is registered."]
    provider = registry.planned_provider(name, program.planned)
    if provider is not None:
        version = registry.installed_version(provider.distribution)
        pattern = f"{provider.prefix}*"
        if version is None:
            lines.append(
                f"{program.plural.capitalize()} named {pattern} come from {provider.distribution} "
                f"({provider.what}), which is not installed. Install it with "
                f"`pip install {provider.distribution}` "
                f"(from a clone: `pip install ./packages/{provider.distribution}`)."
            )
        else:
            own = sorted(n for n, r in regs.items() if r.distribution == provider.distribution)
            lines.append(
                f"{program.plural.capitalize()} named {pattern} come from {provider.distribution} "
                f"({provider.what}); the installed {provider.distribution} {version} "
                + (
                    f"registers: {', '.join(own)}."
                    if own
                    else f"registers no {program.plural} yet."
                )
            )
    elif regs:
        lines.append(f"Installed {program.plural}: {', '.join(sorted(regs))}.")
    else:
        lines.append(f"No {program.plural} are installed (entry-point group {program.group!r}).")
    _err(program, "\n".join(lines))
    return USAGE_ERROR


def run(program: Program, argv: Sequence[str] | None = None) -> int:
    """Run ``program`` on ``argv`` (``sys.argv[1:]`` by default) and return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    head, rest = _split(args_list, program.option)
    parser = _parser(program)
    args = parser.parse_args(head)
    if args.command == "ls" and args.name is not None:
        parser.error(f"ls takes no {program.option}")

    try:
        regs = registry.installed(program.group)
    except registry.DuplicateRegistrationError as exc:
        _err(program, str(exc))
        return USAGE_ERROR

    if args.command == "ls":
        return _list(program, regs)

    if args.name is None:
        if not regs:
            _err(
                program,
                f"no {program.plural} are registered yet (entry-point group {program.group!r} is "
                f"empty), so there is nothing to run. They arrive with the pref method packages; "
                f"`{program.prog} ls` lists them once installed.",
            )
        else:
            _err(
                program,
                f"choose a {program.noun} with {program.option} {program.noun.upper()}; "
                f"installed: {', '.join(sorted(regs))}.",
            )
        return USAGE_ERROR

    reg = regs.get(args.name)
    if reg is None:
        return _unknown(program, args.name, regs)

    target = reg.entry_point.load()
    if not callable(target):
        _err(
            program,
            f"{program.noun} {args.name!r} from {reg.source} is not callable "
            f"(got {type(target).__name__}).",
        )
        return USAGE_ERROR
    status = target(rest)
    return 0 if status is None else int(status)
