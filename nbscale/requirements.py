"""The Python packages a remote job needs beyond its image, and the wheelhouse that carries them.

Where the requirements come from (``resolve``), in this order:

- ``--requirements FILE`` (or ``requirements = "FILE"`` in a remote backend's table): that
  file, a relative path read from the job's folder;
- ``--requirements auto``: the kernel's installed versions of the distributions the job
  imports, and of what they require, pinned (``pip freeze`` filtered by import, through
  ``importlib.metadata.packages_distributions``); what the image itself provides (torch,
  numpy: the image is matched to the kernel's torch) is left to the image;
- else a ``requirements.txt`` in the job's folder; else nothing.

``build`` makes the wheelhouse on this machine with pip (``pip wheel``: the wheels of the
whole closure, sdists and local packages built here), so the container installs offline
(``pip install --no-index``): clusters often have no index access. With ``pip_index`` only
the file travels and the container installs from its index. Either way the result is one
zip named by its content: the same requirements for the same target mean no build and no
upload (cached under ``$NBSCALE_HOME/requirements/<key>``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from . import paths
from .errors import NbscaleError, SpecError

AUTO = "auto"
FOUND_NAME = "requirements.txt"
ARCHIVE = "requirements.zip"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
#: what a stock PyTorch image has: never pinned by ``auto``, never installed over
IMAGE_PROVIDES = {"torch", "numpy"}
_NEVER_PINNED = {"nbscale", "pip", "setuptools", "wheel"}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Requirements:
    """Requirement lines to install in the container, and where they came from."""

    text: str
    origin: str  # the file, "auto", or "<folder>/requirements.txt"
    base: Path  # relative paths in the lines are read from here

    @property
    def lines(self) -> list[str]:
        return [
            ln.strip()
            for ln in self.text.splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")
        ]


# -- where they come from -----------------------------------------------------------------
def imported_modules(source: str) -> list[str]:
    """The top-level names a piece of Python imports (``import a.b``, ``from c import d``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module.split(".")[0])
    return list(dict.fromkeys(names))


def auto_pins(modules: list[str]) -> list[str]:
    """``name==version`` of the installed distributions that provide ``modules``, and of the
    distributions they require (markers evaluated here), sorted; the image's own (torch,
    numpy) and nbscale are left out."""
    from packaging.requirements import InvalidRequirement, Requirement

    providers = metadata.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    pins: dict[str, str] = {}

    def walk(dist_name: str) -> None:
        key = _key(dist_name)
        if key in pins or key in IMAGE_PROVIDES or key in _NEVER_PINNED:
            return
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            return
        pins[key] = f"{dist.metadata['Name']}=={dist.version}"
        for line in dist.requires or []:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            walk(req.name)

    for module in modules:
        top = module.split(".")[0]
        if top in stdlib:
            continue
        for dist_name in providers.get(top, []):
            walk(dist_name)
    return sorted(pins.values(), key=str.lower)


def resolve(
    value: str | None, folder: Path | None, modules: list[str] | None = None
) -> Requirements | None:
    """The requirements of a job: ``value`` (a file, or ``auto`` with the job's ``modules``),
    else ``requirements.txt`` in ``folder``, else None."""
    if value == AUTO:
        pins = auto_pins(modules or [])
        if not pins:
            return None
        return Requirements("\n".join(pins) + "\n", AUTO, folder or Path.cwd())
    if value:
        path = Path(value).expanduser()
        if not path.is_absolute() and folder is not None:
            path = folder / path
        if not path.is_file():
            raise SpecError(
                "requirements",
                f"{path} is not a file",
                "give a pip requirements file (e.g. requirements.txt), or auto to pin the "
                "kernel's versions of what the job imports",
            )
        return Requirements(path.read_text(), str(path), path.parent)
    if folder is not None and (folder / FOUND_NAME).is_file():
        path = folder / FOUND_NAME
        return Requirements(path.read_text(), str(path), folder)
    return None


# -- the wheelhouse -------------------------------------------------------------------------
def target_python() -> str:
    """The Python the container runs: the kernel's (the image is chosen to match it)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class Wheelhouse:
    archive: Path  # the zip that travels
    digest: str  # its sha256: its name in object storage
    wheels: list[str]
    index: bool  # True: only requirements.txt, installed from the container's index
    built: bool  # False when it came from the cache


def cache_key(req: Requirements, index: bool, python: str) -> str:
    return hashlib.sha256(
        json.dumps([req.lines, str(req.base), index, python, sys.platform]).encode()
    ).hexdigest()[:24]


def _zip(folder: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.iterdir()):
            info = zipfile.ZipInfo(path.name, date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    tmp.replace(dest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_wheel(req: Requirements, dest: Path) -> None:
    # pip reads a file's relative --find-links/-r next to it, and local paths from the cwd:
    # the user's own file where there is one, run from its folder
    own = Path(req.origin)
    if req.origin != AUTO and own.is_file() and own.read_text() == req.text:
        listed, temporary = own, None
    else:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, dir=dest.parent) as fh:
            fh.write(req.text)
        listed = temporary = Path(fh.name)
    try:
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
               "-w", str(dest), "-r", str(listed)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=req.base)
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise NbscaleError(
            f"the job's requirements ({req.origin}) could not be made into wheels on this "
            f"machine: {' / '.join(said[-3:])[-800:]}",
            "fix the requirement pip names, or set pip_index = true in the backend's table "
            "when the cluster can reach a package index",
        )


def _not_for_target(wheel: Path, python: str) -> bool:
    """A compiled wheel made for another Python or platform than the container's."""
    from packaging.utils import parse_wheel_filename

    _, _, _, tags = parse_wheel_filename(wheel.name)
    if any(t.abi == "none" and t.platform == "any" for t in tags):
        return False
    cp = "cp" + python.replace(".", "")
    linux = sys.platform == "linux" and os.uname().machine == "x86_64"
    return not (
        linux and any(t.interpreter in (cp, "py3", "abi3") or t.abi == "abi3" for t in tags)
    )


def _download_for_target(wheel: Path, dest: Path, python: str) -> None:
    from packaging.utils import parse_wheel_filename

    name, version, _, _ = parse_wheel_filename(wheel.name)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--platform", "manylinux2014_x86_64", "--python-version", python,
           "--implementation", "cp", "-d", str(dest), f"{name}=={version}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NbscaleError(
            f"{name} {version} has no wheel for the container (Linux x86_64, Python {python}) "
            f"and this machine cannot build one: {proc.stderr.strip()[-400:]}",
            "set pip_index = true so the container installs it from its index",
        )
    wheel.unlink()


def build(req: Requirements, index: bool = False, python: str | None = None) -> Wheelhouse:
    """The zip that carries ``req`` to the container; built once per content and target."""
    python = python or target_python()
    key = cache_key(req, index, python)
    cache = paths.home() / "requirements" / key
    archive = cache / ARCHIVE
    done = cache / "COMPLETE"
    if done.is_file() and archive.is_file():
        info = json.loads(done.read_text())
        return Wheelhouse(archive, info["sha256"], info["wheels"], index, built=False)
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True, mode=0o700)
    content = cache / "content"
    content.mkdir()
    (content / FOUND_NAME).write_text(req.text)
    wheels: list[str] = []
    if not index:
        _pip_wheel(req, content)
        named = {_key(re.split(r"[ <>=!~\[(;@]", ln)[0]) for ln in req.lines}
        for wheel in sorted(content.glob("*.whl")):
            dist = _key(wheel.name.split("-")[0])
            if dist in IMAGE_PROVIDES and dist not in named:
                wheel.unlink()  # the image's own stays the image's
            elif _not_for_target(wheel, python):
                _download_for_target(wheel, content, python)
        wheels = sorted(p.name for p in content.glob("*.whl"))
    _zip(content, archive)
    digest = _sha256(archive)
    done.write_text(json.dumps({"sha256": digest, "wheels": wheels, "origin": req.origin}))
    return Wheelhouse(archive, digest, wheels, index, built=True)


# -- in the container -----------------------------------------------------------------------
def install_command(folder: Path, index: bool) -> list[str]:
    """What the container runs before the job: offline, exactly the wheels that came; or,
    with ``index``, the file from the container's own index."""
    base = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if index:
        return [*base, "-r", str(folder / FOUND_NAME)]
    wheels = sorted(str(p) for p in folder.glob("*.whl"))
    return [*base, "--no-index", "--no-deps", *wheels] if wheels else []
