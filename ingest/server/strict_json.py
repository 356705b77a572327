"""Strict JSON, both ways: what the server writes and what it reads.

Python's ``json`` writes ``NaN``, ``Infinity`` and ``-Infinity`` (``allow_nan`` is on by default)
and reads them back, but they are not JSON: a browser's ``JSON.parse`` refuses the whole body, so
one ``NaN`` in a session's meta once made ``GET /api/sessions`` unreadable for every page. Here:

- ``dumps`` always has ``allow_nan=False`` (a non-finite number is a bug: ``ValueError``);
- ``loads`` refuses ``NaN``/``Infinity``, numbers that overflow to infinity (``1e400``), integers
  written with more than ``MAX_INT_DIGITS`` characters (engine.io's own bound), strings holding a lone
  surrogate (``"\\ud800"``: no UTF-8 encodes it, so SQLite and every writer would fail on it)
  and nesting deeper than ``max_depth`` (checked before parsing: Python's parser recurses, and
  100,000 ``[`` raised ``RecursionError``). The error (``JSONRefusedError``, a ``ValueError``)
  names the field, e.g. ``meta.x``.

``StrictJSON`` is a module-like object (``dumps``/``loads``) for python-socketio's ``json=``
parameter; the HTTP side uses the same one (``ingest/server/responses.py``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np

MAX_INT_DIGITS = 100
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # a JSON string literal (brackets in it do not nest)
_SURROGATE = re.compile("[\ud800-\udfff]")
_SCAN_PIECE = 1 << 20

Path = list[str | int]


class JSONRefusedError(ValueError):
    """A JSON text this server does not take; ``path`` is where in the document (keys and
    indices, empty for the whole of it), ``document`` the document as far as it could be read
    (None when it could not be parsed at all)."""

    def __init__(self, problem: str, path: Path | None = None, document: Any = None) -> None:
        self.problem = problem
        self.path = path or []
        self.document = document
        super().__init__(self.describe())

    def describe(self, path: Path | None = None, whole: str = "the JSON") -> str:
        """The message, naming ``path`` (``self.path`` by default; empty: ``whole``)."""
        where = field_name(self.path if path is None else path) or whole
        return f"{where} {self.problem}"


def field_name(path: Path) -> str:
    """``["meta", "x", 2]`` -> ``meta.x[2]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Refused:
    """What the second, lenient parse puts where the strict one refused a value."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _refuse_constant(name: str) -> float:
    raise JSONRefusedError(f"is {name}, which JSON does not have: send a finite number")


def _checked_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JSONRefusedError(f"is {text[:40]}, beyond the largest number (it would be infinity)")
    return value


def _checked_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:  # (its sign counted, as engine.io's clients count it)
        raise JSONRefusedError(f"is an integer of {len(text)} characters; at most {MAX_INT_DIGITS} are taken")
    return int(text)


def _marking(check: Callable[[str], Any]) -> Callable[[str], Any]:
    def mark(text: str) -> Any:
        try:
            return check(text)
        except JSONRefusedError as exc:
            return _Refused(exc.problem)

    return mark


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


def nesting_exceeds(text: str, limit: int) -> bool:
    """Whether arrays and objects in ``text`` nest deeper than ``limit`` (without parsing:
    brackets are counted outside string literals, in C: numpy)."""
    if text.count("[") + text.count("{") <= limit:
        return False  # cannot nest deeper than it has brackets (almost every text: no work)
    structure = _STRING.sub("", text).encode("utf-8", "surrogatepass")
    carry = 0
    for start in range(0, len(structure), _SCAN_PIECE):
        piece = np.frombuffer(structure, np.uint8, min(_SCAN_PIECE, len(structure) - start), start)
        steps = ((piece == 0x5B) | (piece == 0x7B)).astype(np.int32) - ((piece == 0x5D) | (piece == 0x7D))
        depth = np.cumsum(steps) + carry
        if depth.size and int(depth.max()) > limit:
            return True
        carry = int(depth[-1]) if depth.size else carry
    return False


def find_refused(value: Any, path: Path | None = None) -> tuple[Path, str] | None:
    """The first value (depth first) of a parsed document that is refused: a lone surrogate in a
    string or a key, or a mark of the lenient parse; its path and what is wrong with it."""
    path = path or []
    if isinstance(value, _Refused):
        return path, value.problem
    if isinstance(value, str):
        return (path, "holds a lone surrogate (not a character: no UTF-8 encodes it)") if _has_surrogate(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _has_surrogate(key):
                return [*path, key.encode("utf-8", "backslashreplace").decode()], "is a key holding a lone surrogate"
            found = find_refused(item, [*path, key])
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = find_refused(item, [*path, index])
            if found is not None:
                return found
    return None


class StrictJSON:
    """``dumps`` and ``loads`` with the rules above (``max_depth``: setting ``max_json_depth``)."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth

    def dumps(self, obj: Any, **options: Any) -> str:
        options["allow_nan"] = False
        return json.dumps(obj, **options)

    def loads(self, text: str | bytes | bytearray, **options: Any) -> Any:
        if isinstance(text, bytes | bytearray):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise JSONRefusedError(f"is not UTF-8 (byte {exc.start})") from None
        if nesting_exceeds(text, self.max_depth):
            raise JSONRefusedError(f"nests arrays and objects deeper than {self.max_depth} levels (max_json_depth)")
        options.pop("parse_int", None)  # engine.io asks for its own: ours is the same bound
        try:
            document = json.loads(
                text, parse_constant=_refuse_constant, parse_float=_checked_float, parse_int=_checked_int, **options
            )
        except JSONRefusedError:
            # again, marking what is refused instead of stopping there, to say where it is
            lenient = json.loads(text, parse_constant=_marking(_refuse_constant), parse_float=_marking(_checked_float),
                                 parse_int=_marking(_checked_int), **options)  # fmt: skip
            found = find_refused(lenient)
            assert found is not None
            raise JSONRefusedError(found[1], found[0], lenient) from None
        except RecursionError:  # deeper than the stack, within max_depth: a tiny recursion limit
            raise JSONRefusedError("nests arrays and objects too deeply") from None
        found = find_refused(document)
        if found is not None:
            raise JSONRefusedError(found[1], found[0], document)
        return document
