"""The runtime's own small closure, as wheels a container installs offline.

``pip install nbscale`` gives a notebook user everything (magics, server extension,
panel). A container needs far less, and no Jupyter: the nbscale wheel installed
with ``--no-deps`` plus the closure of the kind of work it does:

- ``job``: a worker running a cell, script or module; the image brings torch and numpy;
- ``serving``: the model server (``python -m nbscale.serving``);
- ``step``: a pipeline step, which executes a notebook, so papermill and ipykernel
  (and what they need) are its closure, nothing more;
- ``image``: nbscale's one image for every role (``docker/Dockerfile``): the
  ``serving`` and ``step`` closures plus ``kfp``, whose executor runs a KFP step
  (components are compiled with ``install_kfp_package=False``).

``build(kind, dest)`` writes the wheels into ``dest`` (cached per kind and source
under ``$NBSCALE_HOME/wheelhouse``); the container runs ``install_command(dir)``,
``pip install --no-index --no-deps`` of exactly those files, before it starts, so a
stock PyTorch image works without a package index. ``job`` wheels are pure Python
(one wheelhouse for every image); ``serving``, ``step`` and ``image`` carry compiled
wheels for the platform they are built for: by default the pods' (``POD_PLATFORMS``,
Linux x86_64 manylinux, with ``pip download --platform ... --python-version X.Y
--only-binary=:all:``) and this interpreter's Python, which is the Python of the image
nbscale picks for the kernel; never the laptop's own platform (a macOS or Windows
wheel of pyzmq or psutil does not install in a pod). ``platform="native"`` builds
for this machine.

    python -m nbscale.runtime.wheelhouse --kind job -o ./wheels
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

# the closures: every name here must also be a dependency in pyproject.toml (tested)
CLOSURE = {
    # packaging: the container compares the cell's torch and Python with its own (runtime.cell)
    "job": ["cloudpickle>=3.0", "boto3>=1.34", "packaging>=23"],
    "serving": [
        "cloudpickle>=3.0",
        "boto3>=1.34",
        "packaging>=23",
        "prometheus_client>=0.17",
        "httptools>=0.6",
        "uvloop>=0.19",
        "orjson>=3.8",
    ],
    "step": [
        "cloudpickle>=3.0",
        "boto3>=1.34",
        "packaging>=23",
        "papermill>=2.5",
        "ipykernel>=6.20",
        "nbformat>=5.9",
        "pyyaml>=6.0",
    ],
}
# the one image (docker/Dockerfile): the model server, the step's papermill and the KFP
# executor, whose components are compiled with install_kfp_package=False
CLOSURE["image"] = sorted(
    {*CLOSURE["serving"], *CLOSURE["step"], "kfp>=2.7", "kfp-kubernetes>=1.4"}
)
# pure-Python packages published only as source, with the package whose metadata pins
# them: built into (py3-none-any) wheels here, then found beside the index
SOURCE_ONLY = {"kfp-server-api": "kfp"}
# the platforms of a pod (Linux x86_64, glibc >= 2.17): pip takes the first that matches
POD_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
_SKIP = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "node_modules", "__pycache__", ".venvs", "tests",
    "benchmarks", "examples", "docs", ".pytest_cache", ".ruff_cache",
)  # fmt: skip
# what a stock PyTorch image already has: never downloaded, never installed over
IMAGE_PROVIDES = {"torch", "numpy"}


class WheelhouseError(Exception):
    pass


def source_root() -> Path | None:
    """The checkout nbscale runs from, when it is one (an editable or in-tree install)."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "nbscale"' in pyproject.read_text():
        return root
    return None


def _source_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((root / "nbscale").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    digest.update((root / "pyproject.toml").read_bytes())
    return digest.hexdigest()[:16]


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise WheelhouseError(
            f"{' '.join(cmd[2:5])} failed: {(proc.stderr or proc.stdout).strip()[-2000:]}"
        )


def nbscale_wheel(dest: Path) -> Path:
    """The nbscale wheel: built from the checkout, or this version from the package index."""
    dest.mkdir(parents=True, exist_ok=True)
    root = source_root()
    if root is not None:
        # build from a clean copy: setuptools reuses build/ in the tree, which can hold
        # modules that no longer exist
        with tempfile.TemporaryDirectory(prefix="nbscale-wheel-") as tmp:
            copy = Path(tmp) / "src"
            shutil.copytree(root, copy, ignore=_SKIP, symlinks=True)
            # a container runs no Jupyter: no panel (nor its npm build) in this wheel
            _pip(
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "-q",
                "-w",
                str(dest),
                str(copy),
                env={**os.environ, "NBSCALE_NO_PANEL": "1"},
            )
    else:
        version = metadata.version("nbscale")
        _pip("download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest),
             f"nbscale=={version}")  # fmt: skip
    found = sorted(dest.glob("nbscale-*.whl"))
    if not found:
        raise WheelhouseError(f"no nbscale wheel was made in {dest}")
    return found[-1]


def _platform_args(platform: str | list[str] | None, python_version: str | None) -> list[str]:
    args: list[str] = []
    for name in [platform] if isinstance(platform, str) else platform or []:
        args += ["--platform", name]
    if python_version:
        args += ["--python-version", python_version]
    return args


def target(
    platform: str | list[str] | None, python_version: str | None
) -> tuple[list[str] | None, str | None]:
    """The platforms and Python a compiled wheelhouse is built for: the pods' by default,
    this machine's for ``"native"``."""
    if platform in ("native", ["native"]):
        return None, python_version
    platforms = [platform] if isinstance(platform, str) else list(platform or POD_PLATFORMS)
    return platforms, python_version or f"{sys.version_info.major}.{sys.version_info.minor}"


def _source_only_wheels(closure: list[str], dest: Path) -> None:
    """Wheels of the ``SOURCE_ONLY`` packages the closure needs, at the versions the
    closure's own packages pin (read from their wheels' metadata)."""
    import zipfile
    from email.parser import Parser

    from packaging.requirements import Requirement

    parents = {Requirement(r).name: r for r in closure}
    for name, parent in SOURCE_ONLY.items():
        if parent not in parents:
            continue
        probe = dest / ".probe"
        _pip("download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(probe),
             parents[parent])  # fmt: skip
        (wheel,) = probe.glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            requires = Parser().parsestr(zf.read(meta).decode()).get_all("Requires-Dist") or []
        shutil.rmtree(probe)
        pins = [r for r in requires if Requirement(r).name.lower() == name and ";" not in r]
        _pip("wheel", "-q", "--no-deps", "-w", str(dest), *(pins or [name]))


def build(
    kind: str,
    dest: str | Path | None = None,
    platform: str | list[str] | None = None,
    python_version: str | None = None,
) -> Path:
    """The wheelhouse for ``kind``: a folder holding nbscale's wheel and its closure."""
    if kind not in CLOSURE:
        raise WheelhouseError(f"unknown kind {kind!r}; one of {', '.join(CLOSURE)}")
    from .. import paths

    pure = kind == "job"
    if not pure:
        platform, python_version = target(platform, python_version)
    root = source_root()
    version = _source_digest(root) if root else metadata.version("nbscale")
    key = hashlib.sha256(
        json.dumps([kind, CLOSURE[kind], version, platform, python_version]).encode()
    ).hexdigest()[:16]
    cache = paths.home() / "wheelhouse" / f"{kind}-{key}"
    if not (cache / "COMPLETE").exists():
        tmp = cache.with_name(cache.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        nbscale_wheel(tmp)
        _source_only_wheels(CLOSURE[kind], tmp)
        _pip(
            "download",
            "-q",
            "-d",
            str(tmp),
            "--only-binary=:all:",
            "--find-links",
            str(tmp),  # the source-only packages' wheels, made above
            *(["--platform", "any", "--implementation", "py", "--abi", "none"] if pure else []),
            *_platform_args(None if pure else platform, python_version),
            *CLOSURE[kind],
        )
        for path in tmp.glob("*.whl"):  # the image's own torch/numpy stay the image's
            if path.name.split("-")[0].lower().replace("_", "-") in IMAGE_PROVIDES:
                path.unlink()
        (tmp / "COMPLETE").write_text(json.dumps({"kind": kind, "closure": CLOSURE[kind]}))
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
    if dest is None:
        return cache
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for wheel in cache.glob("*.whl"):
        shutil.copy2(wheel, dest / wheel.name)
    return dest


def zipped(folder: Path) -> Path:
    """The wheels of ``folder`` as one zip beside it, byte for byte the same each time (so its
    digest names it in object storage)."""
    import zipfile

    archive = folder.with_name(folder.name + ".zip")
    if not archive.exists():
        tmp = archive.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w") as zf:
            for wheel in sorted(folder.glob("*.whl")):
                info = zipfile.ZipInfo(wheel.name, date_time=(2020, 1, 1, 0, 0, 0))
                zf.writestr(info, wheel.read_bytes())
        tmp.replace(archive)
    return archive


def install_command(folder: str, python: str = "python") -> str:
    """The shell line a container runs before nbscale starts: offline, exactly these wheels."""
    return (
        f"{python} -m pip install --no-index --no-deps --disable-pip-version-check -q "
        f"{folder.rstrip('/')}/*.whl"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbscale.runtime.wheelhouse")
    parser.add_argument("--kind", choices=sorted(CLOSURE), default="job")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument(
        "--platform",
        action="append",
        help="e.g. manylinux2014_x86_64 (repeatable; default: the pods' Linux x86_64 "
        "platforms; native: this machine's)",
    )
    parser.add_argument("--python-version", help="e.g. 3.11 (default: this Python's)")
    args = parser.parse_args(argv)
    try:
        out = build(args.kind, args.output, args.platform, args.python_version)
    except WheelhouseError as exc:
        print(f"nbscale: {exc}", file=sys.stderr)
        return 1
    wheels = sorted(p.name for p in out.glob("*.whl"))
    print(f"{len(wheels)} wheels in {out}: {', '.join(wheels)}")
    print(f"in the container: {install_command(str(out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
