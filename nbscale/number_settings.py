"""A number read from a setting (an environment variable or an option), checked in one way.

Empty or unset gives the default; text that is not a number is NaN, which every range check
refuses, so ``"soon"``, ``"nan"`` and ``"1e9"`` all get the setting's one message.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def number_setting(
    raw: str | None, default: float, within: Callable[[float], bool], refusal: str
) -> float:
    """``raw`` as a float that ``within`` accepts, ``default`` when empty; otherwise a
    ``ValueError`` with ``refusal`` (which names the setting and says what to give)."""
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isnan(value) or not within(value):
        raise ValueError(refusal)
    return value
