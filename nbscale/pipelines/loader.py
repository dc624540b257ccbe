"""Load a pipeline from a path: a tagged notebook or a pipeline.yaml, analysed and checked."""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecError
from . import manifest, notebooks, tagged
from .dataflow import analyse
from .model import Pipeline, pipeline_file, resolve


def load(path: str | Path) -> Pipeline:
    p = resolve(path)
    if p.is_dir():
        found = pipeline_file(p)
        if found is None:
            raise SpecError(
                "PATH",
                f"{path} is a folder without a pipeline.yaml",
                "give the notebook or yaml file",
            )
        p = found
    if p.suffix in (".yaml", ".yml"):
        return analyse(manifest.load(p))
    if p.suffix == ".ipynb":
        nb = notebooks.read(p)
        if not tagged.is_tagged(nb):
            raise SpecError(
                str(path),
                "has no cell tagged step:NAME",
                "tag the first cell of each step with step:NAME (and prev:NAME for its inputs)",
            )
        return analyse(tagged.load(p, nb))
    raise SpecError(
        "PATH", f"{path} is neither a notebook nor a pipeline.yaml", "give a .ipynb or .yaml file"
    )
