"""`.ci/run` runs exactly the test command the README documents."""

from __future__ import annotations

import re
from pathlib import Path


def _readme_test_command(repo: Path) -> str:
    text = (repo / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Running the tests\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Running the tests' section"
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", section.group(1), re.S)
    assert blocks, "the test section has no code block"
    lines = [line for line in blocks[0].splitlines() if line.strip()]
    assert len(lines) == 1, f"the test command must be one line, got {lines}"
    return lines[0].strip()


def test_ci_runs_the_readme_test_command(repo):
    command = _readme_test_command(repo)
    script = (repo / ".ci" / "run").read_text(encoding="utf-8")
    lines = [line.strip() for line in script.splitlines()]
    assert command in lines, f"{command!r} is not a line of .ci/run"


def test_ci_script_is_strict_bash(repo):
    text = (repo / ".ci" / "run").read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
