"""The layering rule: storage/ imports nothing from ingest/ (ingest uses storage, never back)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_storage_imports_nothing_from_ingest():
    offenders = {
        path.name: sorted(m for m in imported_modules(path) if m == "ingest" or m.startswith("ingest."))
        for path in sorted((ROOT / "storage").glob("*.py"))
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}
