"""`import pref_core` needs torch and einops only: optional backends are imported lazily."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("diffusers", "transformers", "triton", "peft", "accelerate")


def test_import_pref_core_does_not_import_optional_backends():
    code = (
        "import json, sys\n"
        "import pref_core\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & set(heavy))\n"
        "print(json.dumps(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
