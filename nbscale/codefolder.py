"""The folder a remote job takes with it: what is in it, what it weighs, what it is called.

A job that runs on someone else's machine ships the folder it belongs to: a script's or a
notebook's folder, or for a ``%%train`` cell the kernel's working folder (``JobSpec.workdir``).
In the container that folder is the working directory and is on ``sys.path``, so
``from model import Net`` and ``open("data/labels.csv")`` work as they did in the kernel.

``scan(root)`` lists the files that travel: every ``.gitignore`` (each applies below its
own folder, as git reads them) and ``.nbscaleignore`` files are honoured with ``pathspec``'s
gitwildmatch rules, and a few things never travel (``.git``, ``__pycache__``, virtual
environments, notebook checkpoints, this machine's nbscale home). Over ``limit`` bytes the
scan stops with one message naming the largest files.

The folder is content-addressed: ``CodeFolder.digest`` is the sha256 of every file's path,
mode and content hash, and ``pack`` writes the same zip bytes for the same digest, so an
unchanged folder has the same name in object storage and is not sent again. File hashes are
remembered per (path, size, mtime) in this process: an unchanged re-submit reads nothing.

``outside_modules(names, root)`` says which of the modules a job imports are local files
that live outside the shipped folder (they would be missing in the container).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import os
import shutil
import stat
import sys
import sysconfig
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pathspec

from . import paths
from .bundle import tree_digest
from .errors import NbscaleError

IGNORE_FILES = (".gitignore", ".nbscaleignore")
#: what never travels unless an ignore file re-includes it (``!name``): version control,
#: caches, and the files that usually hold credentials (a job gets secrets by --secret-env)
ALWAYS_IGNORED = pathspec.GitIgnoreSpec.from_lines(
    [".git/", ".hg/", ".svn/", "__pycache__/", "*.py[co]", ".ipynb_checkpoints/",
     ".pytest_cache/", ".ruff_cache/", ".mypy_cache/", ".DS_Store",
     ".env", ".env.*", ".aws/", ".ssh/", ".kube/", ".netrc", ".pypirc", "*.pem",
     "id_rsa*", "id_ecdsa*", "id_ed25519*"]
)  # fmt: skip
DEFAULT_LIMIT_MB = 100
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
ARCHIVE = "code.zip"

_hashes: dict[tuple[str, int, int, int], str] = {}
_hashes_lock = threading.Lock()


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@dataclass(frozen=True)
class FileEntry:
    rel: str  # posix path under the folder
    path: Path
    size: int
    mtime_ns: int
    executable: bool

    def sha256(self) -> str:
        key = (str(self.path), self.size, self.mtime_ns, int(self.executable))
        with _hashes_lock:
            found = _hashes.get(key)
        if found is None:
            digest = hashlib.sha256()
            with open(self.path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            found = digest.hexdigest()
            with _hashes_lock:
                _hashes[key] = found
        return found


@dataclass
class CodeFolder:
    root: Path
    files: list[FileEntry]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def digest(self) -> str:
        """The folder's name by content: the same files with the same modes, the same name."""
        return tree_digest([(f.rel, f.executable, f.sha256()) for f in self.files])

    def pack(self, dest: Path | None = None) -> Path:
        """The folder as one zip (stored entries, fixed dates and modes: the same digest is
        the same bytes), cached under ``$NBSCALE_HOME/code/<digest>.zip``."""
        digest = self.digest
        if dest is None:
            cache = paths.home() / "code"
            cache.mkdir(exist_ok=True, mode=0o700)
            dest = cache / f"{digest}.zip"
            if dest.is_file():
                return dest
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for f in self.files:
                info = zipfile.ZipInfo(f.rel, date_time=ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = (0o755 if f.executable else 0o644) << 16
                with open(f.path, "rb") as src, zf.open(info, "w", force_zip64=True) as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        tmp.replace(dest)
        return dest


def _load_spec(folder: Path, name: str) -> pathspec.GitIgnoreSpec | None:
    path = folder / name
    if not path.is_file():
        return None
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _ignored(rules: list[tuple[str, pathspec.GitIgnoreSpec]], rel: str, is_dir: bool) -> bool:
    """git's reading: the deepest file with a matching rule decides (``!`` re-includes)."""
    result = False
    probe = rel + "/" if is_dir else rel
    for base, spec in rules:
        if base:
            if not probe.startswith(base + "/"):
                continue
            local = probe[len(base) + 1 :]
        else:
            local = probe
        found = spec.check_file(local)
        if found.include is not None:
            result = found.include
    return result


def _skip_dir(path: Path, home: Path) -> bool:
    return (path / "pyvenv.cfg").is_file() or path == home


def scan(
    root: str | Path, limit: int | None = DEFAULT_LIMIT_MB << 20, setting: str = ""
) -> CodeFolder:
    """The files of ``root`` that travel, sorted; over ``limit`` bytes one ``NbscaleError``
    names the largest files. ``setting`` names where the limit is set, for the message."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise NbscaleError(f"the job's folder {root} does not exist", "check the path")
    home = paths.home().resolve()
    files: list[FileEntry] = []
    rules: list[tuple[str, pathspec.GitIgnoreSpec]] = [("", ALWAYS_IGNORED)]
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in IGNORE_FILES:
            spec = _load_spec(here, name)
            if spec is not None:
                rules.append((rel_dir, spec))
        kept = []
        for name in sorted(dirnames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = here / name
            if full.is_symlink() or _ignored(rules, rel, True) or _skip_dir(full, home):
                continue
            kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if _ignored(rules, rel, False):
                continue
            full = here / name
            try:
                st = full.stat()
            except OSError:
                continue  # a dangling link
            if not stat.S_ISREG(st.st_mode):
                continue
            files.append(FileEntry(rel, full, st.st_size, st.st_mtime_ns, bool(st.st_mode & 0o111)))
    files.sort(key=lambda f: f.rel)
    folder = CodeFolder(root, files)
    if limit is not None and folder.size > limit:
        largest = sorted(files, key=lambda f: -f.size)[:5]
        named = ", ".join(f"{f.rel} ({human_size(f.size)})" for f in largest)
        where = f" ({setting})" if setting else ""
        raise NbscaleError(
            f"the folder that travels with the job, {root}, holds {human_size(folder.size)} "
            f"in {len(files)} files, over the {human_size(limit)} limit{where}; the largest: "
            f"{named}",
            "keep data in object storage (s3://...) and read it from there in the job, list "
            "what should stay behind in a .nbscaleignore file (gitignore syntax), or raise "
            "code_limit_mb",
        )
    return folder


# -- local modules outside the folder ----------------------------------------------------------
def _installed_roots() -> list[str]:
    roots = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with _suppress():
            roots.add(os.path.realpath(sysconfig.get_paths()[key]))
    for prefix in (sys.prefix, sys.base_prefix, sys.exec_prefix):
        roots.add(os.path.realpath(os.path.join(prefix, "lib")))
    return sorted(roots)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], Exception)


def module_file(name: str, search: list[str]) -> str | None:
    """The file the top-level module ``name`` comes from: the loaded one, else where
    ``search`` (then ``sys.path``) finds it; None for built-in and namespace modules."""
    top = name.split(".")[0]
    module = sys.modules.get(top)
    file = getattr(module, "__file__", None) if module is not None else None
    if not file:
        with _suppress():
            spec = importlib.machinery.PathFinder.find_spec(top, [*search, *sys.path])
            file = spec.origin if spec is not None and spec.has_location else None
    return os.path.realpath(file) if isinstance(file, str) else None


def outside_modules(names: list[str], root: str | Path) -> list[tuple[str, str]]:
    """``(module, file)`` for each of ``names`` that is a local file outside ``root``: not
    the standard library, not an installed package, so not in the container either."""
    root_s = os.path.realpath(root)
    installed = _installed_roots()
    found: dict[str, str] = {}
    for name in names:
        top = name.split(".")[0]
        if not top or top in found or top in sys.builtin_module_names or top == "nbscale":
            continue
        file = module_file(top, [root_s])
        if file is None or file.startswith(root_s + os.sep):
            continue
        if any(file.startswith(r + os.sep) for r in installed):
            continue
        if "site-packages" in file or "dist-packages" in file:
            continue
        found[top] = file
    return sorted(found.items())
