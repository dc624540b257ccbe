"""How many BLAS/OpenMP threads each step's kernel gets."""

from __future__ import annotations

import os

from ..cpus import allowed_cpus

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def thread_env(width: int) -> dict[str, str]:
    """What each kernel's BLAS/OpenMP gets when ``width`` steps may run at once: its share of
    the cores.

    Without this, two steps on two cores each start a thread per core, and oversubscribed
    BLAS runs several times slower than the two steps one after another. A value the user set
    in the environment wins.
    """
    if width <= 1:
        return {}
    share = str(max(1, allowed_cpus() // width))
    return {n: share for n in THREAD_VARIABLES if n not in os.environ}
