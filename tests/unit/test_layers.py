"""The layers hold: faces -> engine -> platforms -> runtime/serving -> core, no cycles, and
faces that use each other's public functions only (the contracts are in pyproject.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FACES = {
    "magics": "nbscale.magics",
    "server_ext": "nbscale.server_ext",
    "nbscale/cli": "nbscale.cli",
}


def test_the_import_contracts_are_kept(capsys):
    """import-linter's layers, independence and acyclic-siblings contracts (pyproject.toml)."""
    from importlinter.cli import lint_imports

    code = lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out


def _imports(folder: Path, package: str):
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        parts = package.split(".") + list(path.relative_to(folder).with_suffix("").parts)
        parts = parts[:-1]  # the package relative imports start from
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = parts[: len(parts) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                yield path, node.lineno, base, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, node.lineno, alias.name, []


@pytest.mark.parametrize("folder", sorted(FACES))
def test_a_face_imports_no_other_face_and_no_private_name(folder):
    package = FACES[folder]
    others = [p for p in FACES.values() if p != package]
    problems = []
    for path, line, module, names in _imports(REPO / folder, package):
        where = f"{path.relative_to(REPO)}:{line}"
        if any(module == o or module.startswith(o + ".") for o in others):
            problems.append(f"{where} imports the face {module}")
        if module.startswith("nbscale") and not module.startswith(package):
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private or any(part.startswith("_") for part in module.split(".")):
                problems.append(f"{where} imports private {module} {private}")
    assert problems == []
