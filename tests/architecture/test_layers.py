"""The architecture, enforced: one-way imports between layers, and explicit public names.

rpc/ knows nothing of cameras, operations or the API; cameras/ and imaging/ know nothing of
JSON-RPC; imaging/ does no I/O and knows no trio; library/ knows no trio and no cameras.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import phdserver

PACKAGE = Path(phdserver.__file__).parent

FORBIDDEN = {
    "rpc": ("phdserver.cameras", "phdserver.operations", "phdserver.api", "phdserver.imaging",
            "phdserver.library", "phdserver.app", "phdserver.config"),
    "cameras": ("phdserver.rpc", "phdserver.api", "phdserver.operations", "phdserver.app",
                "phdserver.library", "phdserver.imaging"),
    "imaging": ("phdserver.rpc", "phdserver.api", "phdserver.operations", "phdserver.app",
                "phdserver.cameras", "phdserver.library", "trio", "astropy", "pathlib",
                "socket", "io", "shutil", "tempfile"),
    "library": ("phdserver.rpc", "phdserver.api", "phdserver.operations", "phdserver.app",
                "phdserver.cameras", "trio"),
    "operations": ("phdserver.api", "phdserver.app"),
    "api": ("phdserver.app",),
}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """All nodes except those under ``if TYPE_CHECKING:`` (annotations cost no coupling)."""
    out: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer: str) -> None:
    offenders = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in imports_of(path):
            for banned in FORBIDDEN[layer]:
                if name == banned or name.startswith(banned + "."):
                    offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_every_package_exports_what_it_lists() -> None:
    for info in pkgutil.iter_modules([str(PACKAGE)]):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"phdserver.{info.name}")
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"phdserver.{info.name} has no __all__"
        for name in exported:
            assert hasattr(module, name), f"phdserver.{info.name}.{name} listed but missing"
