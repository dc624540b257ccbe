"""``nbscale.param``: a trial's value of a sweep parameter, on every platform.

Where the value comes from depends on who started the trial:

- nbscale (local trials, and every trial's spec): ``NBSCALE_PARAMS``, a JSON object;
- Katib: ``NBSCALE_PARAM_<name>``, which its trial template fills in from
  ``${trialParameters.<name>}``;
- SageMaker automatic model tuning: the tuned values in the training job's
  ``hyperparameters.json`` (``/opt/ml/input/config``), strings all.

The space (``NBSCALE_SWEEP_SPACE``) turns strings back into the parameter's type.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import SpecError
from .space import Space
from .spec import PARAMS_ENV, SPACE_ENV

PER_NAME_PREFIX = "NBSCALE_PARAM_"
HYPERPARAMETERS = "/opt/ml/input/config/hyperparameters.json"
_MISSING = object()


def current() -> dict[str, Any]:
    """This trial's values (empty outside a sweep)."""
    values: dict[str, Any] = {}
    raw = os.environ.get(PARAMS_ENV)
    if raw:
        values.update(json.loads(raw))
    space = (
        Space.from_list(json.loads(os.environ[SPACE_ENV])) if os.environ.get(SPACE_ENV) else None
    )
    for key, value in os.environ.items():
        if key.startswith(PER_NAME_PREFIX):
            values[key[len(PER_NAME_PREFIX) :]] = value
    hp = Path(os.environ.get("NBSCALE_HYPERPARAMETERS", HYPERPARAMETERS))
    if space is not None and hp.is_file():
        given = json.loads(hp.read_text())
        values.update({k: v for k, v in given.items() if k in space.names})
    if space is None:
        return values
    return {**values, **space.cast(values)}


def param(name: str, default: Any = _MISSING) -> Any:
    """The value of sweep parameter ``name`` in this trial; ``default`` outside a sweep."""
    values = current()
    if name in values:
        return values[name]
    if default is not _MISSING:
        return default
    known = ", ".join(sorted(values)) or "none: this is not a sweep's trial"
    raise SpecError(
        f"param {name!r}",
        f"this trial has no parameter {name!r} (it has {known})",
        "give a default, nbscale.param(name, default), to run the code outside a sweep",
    )
