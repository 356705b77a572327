"""``landmarks.meta.json``: how a session's landmarks were made (live or batch, the engine, the
detector's settings, frames filled after stop).

Its existence also records that analysis ran on the session (the live pipeline writes it when it
first opens a session), which is how a restart knows which stopped sessions to fill. Written
atomically, so a crash leaves the old or the new file, never half of one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from storage.files import replace_atomically


def read(path: Path) -> dict[str, Any] | None:
    """The stored meta, or None when analysis never ran (or a damaged file: treated as absent)."""
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def write(path: Path, meta: dict[str, Any]) -> None:
    replace_atomically(path, json.dumps(meta, allow_nan=False).encode())


def write_if_absent(path: Path, meta: dict[str, Any]) -> None:
    if not path.exists():
        write(path, meta)


def update(path: Path, **changes: Any) -> dict[str, Any]:
    meta = read(path) or {}
    meta.update(changes)
    write(path, meta)
    return meta
