"""Every nbscale command builds the whole parser first: that must not import what only some
commands need (numpy, torch, the serving runtime, papermill), or every command pays for it."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("numpy", "torch", "papermill", "nbscale.endpoints", "nbscale.serving.jsoncodec")

PROBE = """
import json, sys
from nbscale.cli import build_parser
build_parser()
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'torch', 'papermill') or m.startswith('nbscale.'))))
"""


def test_building_the_cli_parser_imports_no_command_s_heavy_modules():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "nbscale.cli.endpoints_cmd" in loaded  # the deploy/predict commands are registered
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
