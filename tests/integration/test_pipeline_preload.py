"""A run's pool preloads what its first step needs: papermill imported without its unused
handlers or the IRI grammar, and the step notebooks' validator compiled, so the first
notebook papermill reads does not compile it; and a step waits for that preload."""

from __future__ import annotations

import json
import subprocess
import sys

PRELOAD = """
import json, sys
from nbscale.pipelines.kernels import KernelPool
from nbscale.pipelines.stepbook import NBFORMAT, NBFORMAT_MINOR
pool = KernelPool(1)
before = pool._loaded.is_set()
pool.wait_loaded()  # nothing preloading yet: returns at once
pool.preload()  # no kernel of the run to wait for here
pool.wait_loaded()
from nbformat.validator import validators
print(json.dumps({
    "loaded_before": before,
    "loaded": pool._loaded.is_set(),
    "compiled": any(k[1:3] == (NBFORMAT, NBFORMAT_MINOR) for k in validators),
    "papermill": "papermill" in sys.modules,
    "unused": [m for m in ("boto3", "requests", "click") if m in sys.modules],
    "grammar": "rfc3987_syntax.syntax_helpers" in sys.modules,
}))
"""


def test_the_pools_preload_imports_papermill_and_compiles_the_validator():
    out = subprocess.run(
        [sys.executable, "-c", PRELOAD], capture_output=True, text=True, check=True
    ).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen == {
        "loaded_before": False,
        "loaded": True,
        "compiled": True,
        "papermill": True,
        "unused": [],
        "grammar": False,
    }
