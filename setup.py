"""Build hook for the JupyterLab panel, the setuptools form of the extension template's
hatch-jupyter-builder hook (same functions, same settings).

Before the Python files are collected, ``hatch_jupyter_builder.npm_builder`` installs the
panel's npm packages in extension/ and runs ``build:prod`` into nbscale/labextension
(skipped when the built panel is newer than extension/src, as the hook's ``skip-if-exists``
and the builder's staleness check do); ``ensure_targets`` then fails the build when the
panel is missing. The built panel, install.json and the server-extension config ship as
data files, under share/jupyter/labextensions/nbscale and etc/jupyter, where Jupyter finds
them in sys.prefix.

setuptools rather than hatchling: magics/ and server_ext/ are mapped into the nbscale
package (package-dir in pyproject.toml), which hatchling's editable installs refuse
("path rewrite ... changes a prefix", pfmoore/editables#20).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
PANEL = "nbscale/labextension"
# the template's ensured-targets
ENSURED = [f"{PANEL}/package.json", f"{PANEL}/static/style.js"]
# the template's build-kwargs and editable-build-kwargs
BUILD = {
    "path": "extension",
    "build_dir": PANEL,
    "source_dir": "extension/src",
    "build_cmd": "build:prod",
    "editable_build_cmd": "build",
    "npm": ["npm"],
}
# the template's shared-data
SHARED = {
    PANEL: "share/jupyter/labextensions/nbscale",
    "extension/install.json": "share/jupyter/labextensions/nbscale",
    "jupyter-config/server-config": "etc/jupyter/jupyter_server_config.d",
}


# NBSCALE_NO_PANEL=1: the wheel a container installs (nbscale.runtime.wheelhouse) runs no
# Jupyter, so it is built without the panel, its npm build or the server config
NO_PANEL = os.environ.get("NBSCALE_NO_PANEL") == "1"


def build_panel(target: str, editable: bool) -> None:
    from hatch_jupyter_builder import npm_builder
    from hatch_jupyter_builder.utils import ensure_targets

    # build:labextension asks this Python for JupyterLab's staging folder
    # (extension/scripts/lab-staging.mjs), not whichever `python` is first on PATH: from
    # `venv/bin/pip install` that is another Python, without the build's JupyterLab
    os.environ.setdefault("NBSCALE_BUILD_PYTHON", sys.executable)
    npm_builder(target, "editable" if editable else "standard", **BUILD)
    ensure_targets(ENSURED)


def shared_data() -> list[tuple[str, list[str]]]:
    """(install folder, [files]) for every file of SHARED, as data_files wants them."""
    folders: dict[str, list[str]] = {}
    seen: set[Path] = set()  # an install.json copied into the build by an older script
    for source, dest in SHARED.items():
        path = ROOT / source
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            folder = Path(dest) / (f.relative_to(path).parent if path.is_dir() else "")
            if folder / f.name not in seen:
                seen.add(folder / f.name)
                folders.setdefault(str(folder), []).append(str(f.relative_to(ROOT)))
    return sorted(folders.items())


class BuildPy(build_py):
    def run(self) -> None:
        if not NO_PANEL:
            build_panel("wheel", bool(getattr(self, "editable_mode", False)))
            # listed now that the panel exists (its file names carry content hashes)
            self.distribution.data_files = shared_data()
        super().run()


class Sdist(sdist):
    def run(self) -> None:
        build_panel("sdist", False)  # the sdist carries the built panel, as the template's does
        super().run()


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
