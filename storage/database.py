"""The index's database engine behind one small interface: SQLite (the embedded default, a file in
the data folder) or PostgreSQL (``--index postgresql://...``: one index for many nodes).

The store's SQL is written once, in the subset both engines speak: ``?`` placeholders (turned into
``%s`` for psycopg), ``INSERT ... ON CONFLICT``, ``COALESCE``; column types go through ``types()``
in the schema (storage/schema.py). Rows come back as dicts on both. Connections are opened here,
and so are the engines' errors turned into the store's: a write the disk could not take is an
``IndexWriteError`` (``ENOSPC`` when full), an index that cannot be reached (PostgreSQL restarting,
the network) a ``StoreUnavailableError`` (``busy``: retry later).
"""

from __future__ import annotations

import errno
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from storage.errors import IndexWriteError, StoreUnavailableError

SQLITE_FULL = 13
Params = Sequence[Any]


class Result(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> dict[str, Any] | None: ...
    def fetchall(self) -> list[dict[str, Any]]: ...


class Connection(Protocol):
    """One connection; ``execute`` runs one statement (``?`` placeholders)."""

    dialect: str

    def execute(self, sql: str, params: Params = ()) -> Result: ...
    def close(self) -> None: ...


class Database(Protocol):
    """Where the index lives: opens connections and names its dialect."""

    dialect: str  # "sqlite" | "postgresql"

    def connect(self) -> Connection: ...
    def describe(self) -> str: ...


# -- SQLite ---------------------------------------------------------------------------------------
def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


class _SqliteConnection:
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.row_factory = _dict_row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # an acked chunk survives power loss, not just kill -9
        conn.execute("PRAGMA foreign_keys=ON")
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> Result:
        try:
            return self._conn.execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise _sqlite_error(exc) from exc

    def close(self) -> None:
        self._conn.close()


def _sqlite_error(exc: sqlite3.Error) -> Exception:
    if isinstance(exc, sqlite3.IntegrityError):
        return exc  # a constraint: the caller's own mistake, kept as it is
    full = getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL
    return IndexWriteError(errno.ENOSPC if full else errno.EIO, f"the index could not write: {exc}")


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def connect(self) -> Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return _SqliteConnection(self.path)

    def describe(self) -> str:
        return f"SQLite {self.path}"


# -- PostgreSQL -----------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\?")


# A transaction left open this long is ended by PostgreSQL itself (its session terminated): a node
# frozen or cut off between a statement and its COMMIT (SIGSTOP, a partition) would otherwise hold
# its row locks (a lease, a session row) until TCP gives up, hours later, and the node taking its
# sessions over would wait on them. The index's transactions last milliseconds; the woken node's
# COMMIT then fails as the index being away does (nothing of it is stored).
IDLE_IN_TRANSACTION_S = 2


class _PostgresConnection:
    dialect = "postgresql"

    def __init__(self, dsn: str, connect_timeout_s: float) -> None:
        import psycopg
        from psycopg.rows import dict_row

        self._psycopg = psycopg
        try:
            # autocommit: the index issues BEGIN / SAVEPOINT / COMMIT itself, as it does on SQLite
            self._conn = psycopg.connect(
                dsn, autocommit=True, row_factory=dict_row, connect_timeout=max(1, round(connect_timeout_s)),
                options=f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_S * 1000}",
            )
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(f"the index (PostgreSQL) cannot be reached: {_first_line(exc)}") from exc

    def execute(self, sql: str, params: Params = ()) -> Result:
        psycopg = self._psycopg
        try:
            cursor = self._conn.execute(_PLACEHOLDER.sub("%s", sql), tuple(params))
        except psycopg.errors.IntegrityError:
            raise
        except psycopg.errors.DiskFull as exc:
            raise IndexWriteError(errno.ENOSPC, f"the index could not write: {_first_line(exc)}") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.IdleInTransactionSessionTimeout) as exc:
            # the server restarted, the network failed, or this transaction sat longer than
            # IDLE_IN_TRANSACTION_S (this node was frozen): nothing of it is stored
            raise StoreUnavailableError(f"the index (PostgreSQL) is not available: {_first_line(exc)}") from exc
        return _PostgresResult(cursor)

    @property
    def broken(self) -> bool:
        return bool(self._conn.broken or self._conn.closed)

    def close(self) -> None:
        self._conn.close()


class _PostgresResult:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor
        self.rowcount: int = cursor.rowcount

    def fetchone(self) -> dict[str, Any] | None:
        row: dict[str, Any] | None = self._cursor.fetchone() if self._cursor.description else None
        return row

    def fetchall(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._cursor.fetchall() if self._cursor.description else []
        return rows


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, dsn: str, connect_timeout_s: float = 5.0) -> None:
        self.dsn = dsn
        self.connect_timeout_s = connect_timeout_s

    def connect(self) -> Connection:
        return _PostgresConnection(self.dsn, self.connect_timeout_s)

    def describe(self) -> str:
        return f"PostgreSQL {redact(self.dsn)}"


def redact(dsn: str) -> str:
    """A DSN fit for a log line: its password replaced."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)


def is_broken(conn: Connection) -> bool:
    """Whether ``conn`` must be replaced (a PostgreSQL connection whose server went away)."""
    return bool(getattr(conn, "broken", False))


def open_database(index: str | None, data_dir: Path, default_name: str) -> Database:
    """The index named by ``--index``: a ``postgresql://`` DSN, else the SQLite file in the data
    folder (``index`` may also name another SQLite file)."""
    if index and index.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(index)
    if index:
        return SqliteDatabase(Path(index.removeprefix("sqlite:///").removeprefix("sqlite://")))
    return SqliteDatabase(Path(data_dir) / default_name)
