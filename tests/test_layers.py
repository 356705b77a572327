"""The house rules, checked on the source: layers, no import circles, SQL and session files only
in storage/.

Layers, top to bottom: ``cli`` -> ``server`` -> ``recording`` -> ``live`` -> ``batch`` ->
``analysis`` -> ``media`` -> the base (``config``, ``exceptions``, ``metrics``, ``background``,
and ``storage``). A module imports only its own layer or lower ones (imports inside functions
count too); ``storage`` imports nothing from ``ingest``; the public client only the base and media.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["ingest.cli", "ingest.server", "ingest.recording", "ingest.live", "ingest.batch", "ingest.analysis",
          "ingest.media"]  # fmt: skip
BASE = ("ingest", "ingest.config", "ingest.exceptions", "ingest.metrics", "ingest.background", "storage")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for folder in ("ingest", "storage") for p in sorted((ROOT / folder).rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, wherever the import statement stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name in known:
                found.add(name)
    return found


def layer(name: str) -> int:
    if name == "ingest" or any(name == base or name.startswith(base + ".") for base in BASE[1:]):
        return len(LAYERS)
    for rank, prefix in enumerate(LAYERS):
        if name == prefix or name.startswith(prefix + "."):
            return rank
    raise AssertionError(f"{name} belongs to no layer: add it to tests/test_layers.py")


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def test_nothing_imports_upward():
    upward = {
        name: sorted(m for m in targets if layer(m) < layer(name))
        for name, targets in graph().items()
        if name != "ingest.client"
    }
    assert {name: mods for name, mods in upward.items() if mods} == {}


def test_storage_imports_nothing_from_ingest():
    offenders = {
        name: sorted(m for m in targets if m.startswith("ingest"))
        for name, targets in graph().items()
        if name.startswith("storage")
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_the_client_imports_nothing_of_the_server():
    allowed = layer("ingest.media")
    assert sorted(m for m in graph()["ingest.client"] if layer(m) < allowed) == []


def test_no_import_circles():
    """Tarjan's strongly connected components: every one must be a single module."""
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert circles == []


SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+TABLE|ALTER\s+TABLE|PRAGMA)\b",
                 re.IGNORECASE | re.DOTALL)  # fmt: skip
SESSION_FILES = ("stream.webm", "landmarks.jsonl", "landmarks.meta.json", "index.sqlite3", "server.lock",
                 ".landmarks.json", "gallery.sqlite3")  # fmt: skip


def strings(path: Path) -> list[tuple[int, str]]:
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_sql_and_session_files_only_in_storage():
    """No SQL statement and no name of a stored file outside storage/: the rest of camingest
    asks the store (a docstring may mention a file; code may not build its path)."""
    found = []
    for path in sorted((ROOT / "ingest").rglob("*.py")):
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
        }  # fmt: skip
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docstrings:
                continue
            text = node.value
            if SQL.search(text) or any(text == name or text.endswith("/" + name) for name in SESSION_FILES):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text[:60]!r}")
    assert found == []
    assert "import sqlite3" not in "".join(p.read_text() for p in (ROOT / "ingest").rglob("*.py"))
