"""The imaging package's public surface, and its promise of no I/O and no trio."""

from __future__ import annotations

import ast
from pathlib import Path

import phdserver.imaging as imaging

PACKAGE = Path(imaging.__file__).parent
ALLOWED_IMPORTS = {
    "__future__",
    "collections",
    "concurrent",
    "contextlib",
    "threading",
    "dataclasses",
    "itertools",
    "math",
    "numba",
    "numpy",
    "os",
    "phdserver",
    "typing",
}


def test_all_names_exist_and_are_public() -> None:
    assert sorted(imaging.__all__) == sorted(set(imaging.__all__))
    for name in imaging.__all__:
        assert not name.startswith("_")
        assert hasattr(imaging, name), name


def test_modules_do_no_io_and_know_no_trio() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
                if node.module and node.module.startswith("phdserver"):
                    assert node.module.startswith("phdserver.imaging"), (path.name, node.module)
            else:
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    assert node.func.id != "open", path.name
                continue
            assert roots <= ALLOWED_IMPORTS, (path.name, roots)
