"""IPython magics, ``%load_ext nbscale``. Thin: parse, call the engine, render.

Each group of magics is its own ``Magics`` class in its own module; this list
is the only place that knows them all.
"""

from __future__ import annotations

import importlib

# (module, class) pairs registered by load_ipython_extension
MAGIC_CLASSES: list[tuple[str, str]] = [
    ("train", "TrainMagics"),
    ("jobs", "JobMagics"),
    ("pipeline", "PipelineMagics"),
    ("deploy", "DeployMagics"),
]


def load_ipython_extension(ipython) -> None:
    for module, cls in MAGIC_CLASSES:
        ipython.register_magics(getattr(importlib.import_module(f"{__name__}.{module}"), cls))
    from nbscale.backends import prewarm

    prewarm()  # cloud backends make their API clients while the notebook goes on
