"""The folder a remote job ships and the options that name its requirements, in process:
what the ignore rules keep, that the container's check of the unpacked folder agrees with
the name the client gave it, the outside-the-folder module report, ``--requirements`` on
``%%train`` and ``nbscale run``, and where a requirements file is read from."""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import pytest

from nbscale import bundle
from nbscale.codefolder import outside_modules, scan
from nbscale.errors import SpecError
from nbscale.requirements import AUTO, imported_modules, resolve
from nbscale.runtime.launch import LaunchError, _unpack


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_ignore_rules_nested_negated_and_never(tmp_path):
    root = tree(
        tmp_path / "p",
        {
            ".gitignore": "*.log\n!keep.log\nbuild/\n",
            "a/.gitignore": "*.csv\n!a/ok.csv\n",  # a path relative to a/: matches nothing
            "a/data.csv": "1",
            "a/b/deep.csv": "2",
            "a/x.py": "x",
            "keep.log": "k",
            "drop.log": "d",
            "build/out.txt": "o",
            ".nbscaleignore": "secrets/\n",
            "secrets/token.txt": "t",
            ".env": "API_TOKEN=x",
            ".git/HEAD": "ref",
            "src/__pycache__/m.cpython-311.pyc": "c",
            "venv/pyvenv.cfg": "home = /usr",
            "venv/lib/site.py": "s",
        },
    )
    names = [f.rel for f in scan(root).files]
    assert names == [".gitignore", ".nbscaleignore", "a/.gitignore", "a/x.py", "keep.log"]


def test_the_containers_check_of_the_unpacked_folder_matches_the_clients_name(tmp_path):
    root = tree(tmp_path / "p", {"m.py": "def f():\n    return 1\n", "d/labels.csv": "a,b\n"})
    os.chmod(root / "m.py", 0o755)
    folder = scan(root)
    archive = folder.pack(tmp_path / "code.zip")
    entries = _unpack(archive, tmp_path / "unpacked")
    assert bundle.tree_digest(entries) == folder.digest
    assert os.access(tmp_path / "unpacked" / "m.py", os.X_OK)
    assert folder.pack(tmp_path / "again.zip").read_bytes() == archive.read_bytes()
    (root / "d" / "labels.csv").write_text("a,b,c\n")
    assert scan(root).digest != folder.digest


def test_an_entry_outside_the_folder_is_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.py", "x")
    with pytest.raises(LaunchError, match="outside"):
        _unpack(evil, tmp_path / "unpacked")
    assert not (tmp_path / "escape.py").exists()


def test_a_name_signed_by_another_home_is_refused(tmp_path):
    signature = bundle.sign_name("abc", b"k" * 32)
    assert bundle.check_name("abc", signature, b"k" * 32)
    assert not bundle.check_name("abd", signature, b"k" * 32)
    assert not bundle.check_name("abc", signature, b"other-key" * 4)


def test_modules_from_local_files_outside_the_folder_are_named(tmp_path, monkeypatch):
    root = tree(tmp_path / "proj", {"model.py": "X = 1\n"})
    tree(tmp_path / "shared", {"helper_outside_mod.py": "Y = 2\n"})
    monkeypatch.syspath_prepend(str(tmp_path / "shared"))
    found = outside_modules(["helper_outside_mod", "model", "json", "yaml", "os.path"], root)
    assert found == [("helper_outside_mod", str(tmp_path / "shared" / "helper_outside_mod.py"))]
    assert "helper_outside_mod" not in sys.modules  # found, not imported


def test_imported_modules_reads_import_lines():
    assert imported_modules("import a.b, c\nfrom d.e import f\nfrom . import g\n") == [
        "a",
        "c",
        "d",
    ]


def test_requirements_come_from_the_option_else_the_folders_file(tmp_path):
    root = tree(tmp_path / "p", {"requirements.txt": "pyyaml\n", "other.txt": "six\n"})
    assert resolve(None, root).text == "pyyaml\n"
    assert resolve("other.txt", root).text == "six\n"  # relative: in the job's folder
    assert resolve(None, tmp_path) is None
    with pytest.raises(SpecError, match="is not a file"):
        resolve("missing.txt", root)
    assert resolve(AUTO, root, ["json"]) is None  # nothing to pin


def test_requirements_on_train_and_run(tmp_path, monkeypatch):
    import argparse

    from magics.train_args import parse_train
    from nbscale.faces.options import add_resource_options, spec_from_args
    from nbscale.specs import Entry

    monkeypatch.chdir(tmp_path)
    (tmp_path / "req.txt").write_text("pyyaml\n")
    args = parse_train("--requirements req.txt")
    assert args.spec.requirements == str(tmp_path / "req.txt")
    assert args.spec.workdir == str(tmp_path)  # a cell's folder: the kernel's working folder
    assert parse_train("--requirements auto").spec.requirements == "auto"
    with pytest.raises(SpecError, match="requirements: .*nope.txt is not a file"):
        parse_train("--requirements nope.txt")
    p = argparse.ArgumentParser()
    add_resource_options(p)
    (tmp_path / "t.py").write_text("print(1)\n")
    spec = spec_from_args(p.parse_args(["--requirements", "auto"]), Entry.from_path("t.py"))
    assert spec.requirements == "auto" and spec.workdir == str(tmp_path)
