"""pref-train: run a training recipe registered by an installed pref package.

Usage::

    pref-train ls [-v]                                  recipes, their packages (and settings)
    pref-train --recipe NAME [--config FILE] [KEY=VALUE ...]
    pref-train --config FILE [KEY=VALUE ...]            the file names its recipe
    pref-train cp NAME FILE                             write the recipe's full config, with help
    pref-train validate (--recipe NAME | --config FILE) [KEY=VALUE ...]
    pref-train                                          the default recipe (dpo-toy, the quickstart)

Recipes are :class:`pref_core.recipes.Recipe` objects in the entry-point group ``pref.recipes``;
a registration that is a plain callable is called with the remaining arguments instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pref_apps import __version__, registry
from pref_apps.cli import USAGE_ERROR, Program, _split, _unknown

DEFAULT_RECIPE = "dpo-toy"

PROGRAM = Program(
    prog="pref-train",
    noun="recipe",
    plural="recipes",
    group=registry.RECIPES,
    option="--recipe",
    description="Train a text-to-image model with a preference-alignment recipe.",
    planned=registry.PLANNED_RECIPES,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pref-train",
        description=(
            "Train a text-to-image model with a preference-alignment recipe. Without arguments "
            f"runs the default recipe {DEFAULT_RECIPE!r} (the quickstart: toy base → "
            "Diffusion-DPO → evaluation → report)."
        ),
        epilog=(
            "Recipes are registered by installed pref packages in the entry-point group "
            f"{registry.RECIPES!r}.\nSettings: KEY=VALUE with dotted keys (optim.lr=1e-5 "
            "train.steps=100); `pref-train cp RECIPE FILE` writes them all with their help.\n\n"
            "commands:\n  ls [-v]          list the installed recipes\n"
            "  cp NAME FILE     write a recipe's configuration to FILE\n"
            "  validate         check a configuration (keys, values, model and data sources) "
            "without training"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipe", metavar="NAME", help="the recipe to run")
    parser.add_argument("--config", metavar="FILE", help="YAML configuration (see cp)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="ls: show settings sources")
    parser.add_argument(
        "args", nargs="*", help="a command (ls, cp, validate) and/or KEY=VALUE settings"
    )
    return parser


def _err(message: str) -> int:
    print(f"pref-train: {message}", file=sys.stderr)
    return USAGE_ERROR


def _load_recipe(name: str, regs: dict[str, registry.Registration]):
    reg = regs.get(name)
    if reg is None:
        return None, _unknown(PROGRAM, name, regs)
    return reg.entry_point.load(), 0


def _ls(regs: dict[str, registry.Registration], verbose: bool) -> int:
    if not regs:
        print("No recipes are installed (entry-point group 'pref.recipes' is empty).")
        return 0
    width = max(len(n) for n in regs)
    for name in sorted(regs):
        reg = regs[name]
        try:
            target = reg.entry_point.load()
            description = (
                getattr(target, "description", "") or (target.__doc__ or "").strip().split("\n")[0]
            )
        except Exception as exc:
            target, description = None, f"(cannot be loaded: {exc})"
        provider = f"{reg.distribution or '?'} {reg.version or ''}".strip()
        print(f"{name:<{width}}  {description}  [{provider}]")
        if verbose and target is not None:
            for label in ("paper", "hardware"):
                value = getattr(target, label, "")
                if value:
                    print(f"{'':<{width}}    {label}: {value}")
    return 0


def _config(recipe, config_file: str | None, overrides: list[str]):
    from pref_apps.config import build_config, parse_overrides, read_config_file

    layers = []
    if config_file:
        layers.append((f"config file {config_file}", read_config_file(config_file)))
    layers.append(("command line", parse_overrides(overrides)))
    return build_config(recipe, layers)


def _validate(recipe, config) -> list[str]:
    """Checks that need no compute: the model and data sources exist and read."""
    from pref_apps.trainer import TOY_PRETRAINED

    problems: list[str] = []
    if recipe.task == "module":  # the program loads its own models and data
        try:
            program = recipe.build_program(config.objective)
        except (TypeError, ValueError) as exc:
            return [f"objective: {exc}"]
        check = getattr(program, "validate", None)
        return list(check(config)) if check is not None else []
    base = config.model.base
    if not (base.startswith(TOY_PRETRAINED) or base in ("toy", "toy-flux", "sd15", "sdxl", "flux")):
        path = Path(base)
        if path.exists():
            if not (path / "model_index.json").exists():
                problems.append(
                    f"model.base {base!r} is a folder without model_index.json (not a diffusers pipeline)"
                )
        elif base.count("/") != 1:
            problems.append(
                f"model.base {base!r} is neither an existing folder nor a hub id (ORG/NAME) nor a toy kind"
            )
    source = config.data.source
    if not source.startswith("toy-"):
        try:
            from pref_apps.trainer import open_data_source

            opened = open_data_source(source, config.data.split)
            print(f"data: {opened.name}")
        except Exception as exc:
            problems.append(f"data.source {source!r}: {exc}")
    if recipe.task == "preference" and source in ("toy-pretrain", "toy-winners"):
        problems.append(
            f"recipe {recipe.name} trains on pairs but data.source={source!r} gives single images"
        )
    if recipe.task == "denoising" and source == "toy-pairs":
        problems.append(
            f"recipe {recipe.name} trains on single images; use data.source=toy-winners or toy-pretrain"
        )
    try:
        recipe.build_objective(config.objective)
    except (TypeError, ValueError) as exc:
        problems.append(f"objective: {exc}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # What follows `--recipe NAME` is the recipe's: settings and --config for a Recipe, anything
    # at all for a recipe registered as a plain command.
    head, rest = _split(args_list, "--recipe")
    parser = _parser()
    args = parser.parse_intermixed_args(head)
    positional = list(args.args)
    command = positional[0] if positional and positional[0] in ("ls", "cp", "validate") else None
    if command:
        positional = positional[1:]
    try:
        regs = registry.installed(registry.RECIPES)
    except registry.DuplicateRegistrationError as exc:
        return _err(str(exc))

    if command == "ls":
        if args.recipe or args.config or positional:
            return _err("ls takes no --recipe, --config or settings")
        return _ls(regs, args.verbose)

    from pref_apps.config import ConfigError, read_config_file

    if command == "cp":
        if len(positional) != 2:
            return _err("usage: pref-train cp RECIPE FILE")
        name, out = positional
        recipe, status = _load_recipe(name, regs)
        if recipe is None:
            return status
        from pref_apps.config import build_config, to_yaml

        Path(out).write_text(to_yaml(build_config(recipe, []), with_help=True))
        print(
            f"wrote the configuration of {name} to {out}; run it with `pref-train --config {out}`"
        )
        return 0

    name = args.recipe
    if name is None and not regs:
        return _err(
            "no recipes are registered yet (entry-point group 'pref.recipes' is empty), so there "
            "is nothing to run; install pref-apps or a pref method package"
        )
    if name is None and args.config:
        try:
            name = read_config_file(args.config).get("recipe")
        except ConfigError as exc:
            return _err(str(exc))
        if not name:
            return _err(f"{args.config} names no recipe; add `recipe: NAME` or pass --recipe NAME")
    if name is None:
        if positional:
            return _err(
                "settings given but no recipe; add --recipe NAME (pref-train ls lists them)"
            )
        if command == "validate":
            return _err("validate needs --recipe NAME or --config FILE")
        name = DEFAULT_RECIPE
        print(
            f"pref-train: no recipe given; running the default recipe {name!r} (pref-train --help for more)"
        )
    target, status = _load_recipe(name, regs)
    if target is None:
        return status

    from pref_core.recipes import Recipe

    if not isinstance(target, Recipe):
        if command == "validate" or args.config:
            return _err(f"{name} is a plain command, not a Recipe: it takes no --config/validate")
        if not callable(target):
            return _err(
                f"recipe {name!r} is neither a Recipe nor callable (got {type(target).__name__})"
            )
        result = target(rest)
        return 0 if result is None else int(result)

    if rest:
        more = parser.parse_intermixed_args(rest)
        if more.recipe or (more.config and args.config):
            return _err("give --recipe and --config once each")
        args.config = args.config or more.config
        positional += list(more.args)

    try:
        config = _config(target, args.config, positional)
    except ConfigError as exc:
        return _err(str(exc))

    if command == "validate":
        problems = _validate(target, config)
        if problems:
            return _err("the configuration has problems:\n  " + "\n  ".join(problems))
        print(f"configuration of {name} is valid")
        return 0

    from pref_apps.models import ModelSpecError
    from pref_apps.trainer import (
        DataPreparationError,
        ProgramSetupError,
        ResumeError,
        TrainingDiverged,
        run_recipe,
    )

    try:
        run_recipe(target, config)
    except ModelSpecError as exc:
        return _err(f"model.base: {exc}")
    except TrainingDiverged as exc:
        print(f"pref-train: training stopped: {exc}", file=sys.stderr)
        return 1
    except (ResumeError, DataPreparationError, ProgramSetupError) as exc:
        return _err(str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
