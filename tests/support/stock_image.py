"""A stock PyTorch image, stood in for by a fresh venv with this machine's torch and numpy linked in."""

from __future__ import annotations

import re
import subprocess
import venv
from importlib import metadata
from pathlib import Path


def _distribution_closure(*names: str) -> list[metadata.Distribution]:
    seen: dict[str, metadata.Distribution] = {}

    def walk(name: str) -> None:
        key = name.lower().replace("_", "-")
        if key in seen or key in ("setuptools", "pip"):
            return
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return
        seen[key] = dist
        for req in dist.requires or []:
            if "extra ==" not in req:
                walk(re.split(r"[ <>=!~\[(;]", req.strip())[0])

    for name in names:
        walk(name)
    return list(seen.values())


def stock_image_venv(root: Path) -> Path:
    """A fresh venv holding what a stock PyTorch image holds: torch and numpy (linked in)."""
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    provided = root / "image-site"  # what the stock image ships, linked rather than copied
    provided.mkdir()
    for dist in _distribution_closure("torch", "numpy"):
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            src = Path(dist.locate_file(top))
            if src.exists() and not (provided / top).exists() and top != "..":
                (provided / top).symlink_to(src)
    (site / "image.pth").write_text(str(provided) + "\n")
    return python
