"""The index's schema and its migrations: one list, applied in order on SQLite and PostgreSQL.

A migration is a version number and either statements (column types written as ``{INT}``,
``{REAL}``, ``{BLOB}``: 64-bit integers, doubles and bytes on each engine) or a function of the
connection. ``migrate`` applies the ones a database has not had yet, each in its own transaction,
under a lock (several nodes may start at once on one PostgreSQL), and records the version.

Data folders made before versions were recorded hold the tables of version 1 already (``CREATE
TABLE IF NOT EXISTS``) and maybe some of version 2's columns: both are written to find that out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from storage.database import Connection

TYPES = {
    "sqlite": {"INT": "INTEGER", "REAL": "REAL", "BLOB": "BLOB"},
    "postgresql": {"INT": "BIGINT", "REAL": "DOUBLE PRECISION", "BLOB": "BYTEA"},
}
# an arbitrary, fixed key: the advisory lock the nodes of one PostgreSQL take while migrating
PG_MIGRATION_LOCK = 7_215_034_117


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    statements: tuple[str, ...] = ()
    run: Callable[[Connection], None] | None = None


def ddl(statement: str, dialect: str) -> str:
    """``statement`` with its column types for ``dialect`` (``{INT}``, ``{REAL}``, ``{BLOB}``)."""
    for name, sql_type in TYPES[dialect].items():
        statement = statement.replace("{" + name + "}", sql_type)
    return statement


def _columns(conn: Connection, table: str) -> set[str]:
    if conn.dialect == "sqlite":
        return {row["name"] for row in conn.execute(f"PRAGMA table_info({table})").fetchall()}
    rows = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,)).fetchall()
    return {row["column_name"] for row in rows}


def _add_columns(table: str, columns: dict[str, str]) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        have = _columns(conn, table)
        for column, declaration in columns.items():
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl(declaration, conn.dialect)}")

    return run


def _each(conn: Connection, *steps: Callable[[Connection], None]) -> None:
    for step in steps:
        step(conn)


MIGRATIONS = (
    Migration(1, "sessions, chunks, init segments, snapshots", (
        """CREATE TABLE IF NOT EXISTS sessions (
            id            TEXT PRIMARY KEY,
            created_at    TEXT NOT NULL,               -- ISO 8601, UTC
            state         TEXT NOT NULL,               -- recording | stopped | failed
            mime          TEXT NOT NULL,
            meta          TEXT NOT NULL DEFAULT '{}',  -- client "meta" from start, JSON
            token_hash    TEXT NOT NULL,               -- sha256 of the session token
            next_seq      {INT} NOT NULL DEFAULT 0,
            bytes         {INT} NOT NULL DEFAULT 0,    -- acked bytes = length of the raw stream
            frames        {INT} NOT NULL DEFAULT 0,    -- video frames completed so far
            first_ts_ms   {REAL},                      -- first / last video frame timestamp
            last_ts_ms    {REAL},
            reader_state  TEXT,                        -- JSON of WebMReader.state() after next_seq-1
            error         TEXT,                        -- why the session failed
            stopped_at    TEXT
        )""",
        """CREATE TABLE IF NOT EXISTS chunks (
            session_id    TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            seq           {INT} NOT NULL,
            "offset"      {INT} NOT NULL,              -- in the raw stream
            size          {INT} NOT NULL,
            sha256        TEXT NOT NULL,
            received_at   {REAL} NOT NULL,             -- unix time, server clock
            t_ms          {REAL},                      -- client time, if sent
            units         TEXT NOT NULL,               -- blocks this chunk completed (storage/records.py)
            frames_before {INT} NOT NULL,              -- video frames completed by earlier chunks
            frames        {INT} NOT NULL,              -- video frames completed by this chunk
            keyframe      {INT},                       -- frame index of the last keyframe completed here
            PRIMARY KEY (session_id, seq)
        )""",
        """CREATE TABLE IF NOT EXISTS session_init (
            session_id    TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
            init          {BLOB} NOT NULL              -- the init segment (normalised Segment header)
        )""",
        """CREATE TABLE IF NOT EXISTS snapshots (
            session_id    TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            snapshot_id   TEXT NOT NULL,
            mime          TEXT NOT NULL,
            t_ms          {REAL},
            bytes         {INT} NOT NULL,
            width         {INT} NOT NULL,
            height        {INT} NOT NULL,
            created_at    TEXT NOT NULL,
            PRIMARY KEY (session_id, snapshot_id)
        )""",
    )),
    Migration(2, "landmark counters, ended_by, landmarks_error", run=_add_columns("sessions", {
        "landmark_frames": "{INT} NOT NULL DEFAULT 0",  # frames with stored landmark results (incl. skipped)
        "face_frames": "{INT} NOT NULL DEFAULT 0",  # of those, frames with at least one face
        "skipped_frames": "{INT} NOT NULL DEFAULT 0",  # of those, skipped live (not yet filled)
        "ended_by": "TEXT",  # client (stop) | idle | close
        "landmarks_error": "TEXT",  # why filling its landmarks cannot complete
    })),
    Migration(3, "indexes for listings and expiry", (
        "CREATE INDEX IF NOT EXISTS sessions_by_created ON sessions (created_at, id)",
        "CREATE INDEX IF NOT EXISTS sessions_by_state ON sessions (state, created_at)",
    )),
    Migration(4, "the gallery in the index (people by id, one per name key)", (
        """CREATE TABLE IF NOT EXISTS people (
            id            TEXT PRIMARY KEY,
            name          TEXT NOT NULL,               -- as given, NFC
            key           TEXT NOT NULL UNIQUE,        -- NFKC casefolded: one person per key
            created_at    TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS gallery_images (
            id            TEXT PRIMARY KEY,
            person_id     TEXT NOT NULL REFERENCES people(id) ON DELETE CASCADE,
            file          TEXT NOT NULL,               -- the photo as uploaded, kept by the store
            source        TEXT NOT NULL,               -- the file name it was uploaded as
            box           TEXT NOT NULL,               -- the face in it: x,y,w,h
            descriptor    {BLOB} NOT NULL,             -- 128 float64, little-endian
            created_at    TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS gallery_state (
            id            {INT} PRIMARY KEY,           -- always 1
            generation    {INT} NOT NULL               -- +1 with every change
        )""",
        "CREATE INDEX IF NOT EXISTS gallery_images_by_person ON gallery_images (person_id)",
    )),
    Migration(5, "object storage: durable_seq, planned segments, derived files' generations, per-chunk state",
              run=lambda conn: _each(conn, _add_columns("sessions", {
                  "durable_seq": "{INT} NOT NULL DEFAULT -1",  # highest seq in object storage (-1: none)
                  "segment_plan": "TEXT",  # the segment being uploaded, "first-last": the same key after a crash
                  "changed_gen": "{INT} NOT NULL DEFAULT 0",  # +1 when a derived file changes
                  "uploaded_gen": "{INT} NOT NULL DEFAULT 0",  # the changed_gen whose files are all uploaded
                  "finalized": "{INT} NOT NULL DEFAULT 0",  # the seekable recording exists
              }), _add_columns("chunks", {
                  "after_state": "TEXT",  # JSON: the session's reader state and timestamps after this chunk
              }))),
    Migration(6, "leases: one owner per session across nodes, and their history", (
        """CREATE TABLE IF NOT EXISTS leases (
            session_id    TEXT PRIMARY KEY,            -- not a foreign key: a lease may outlive a deleted session
            node          TEXT NOT NULL,
            expires_at    {REAL} NOT NULL,             -- seconds since the epoch, by the index's clock
            epoch         {INT} NOT NULL               -- +1 at every change of owner
        )""",
        """CREATE TABLE IF NOT EXISTS lease_history (
            session_id    TEXT NOT NULL,
            node          TEXT NOT NULL,
            epoch         {INT} NOT NULL,
            what          TEXT NOT NULL,               -- acquired | released | lost
            at            {REAL} NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS lease_history_by_session ON lease_history (session_id, at)",
        "CREATE INDEX IF NOT EXISTS leases_by_node ON leases (node, expires_at)",
    )),
    Migration(7, "what the sessions page lists without the landmarks: a digest, who appears", (
        """CREATE TABLE IF NOT EXISTS session_people (  -- who appears in a session (from its digest), for filters
            session_id    TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            name          TEXT NOT NULL,
            frames        {INT} NOT NULL,
            PRIMARY KEY (session_id, name)
        )""",
        "CREATE INDEX IF NOT EXISTS session_people_by_name ON session_people (name)",
    ), run=_add_columns("sessions", {
        "digest": "TEXT",  # JSON: who appears, the thumbnail's frame (storage/landmarks.py)
        "digest_key": "TEXT",  # the landmarks file (size:mtime) the digest was made from
    })),
    Migration(8, "the video track a session's stream has (codec, size), read with its Tracks", (), run=_add_columns(
        "sessions", {"video": "TEXT"},  # JSON {"codec", "width", "height"}, or "null": no video track
    )),
)  # fmt: skip
LATEST = MIGRATIONS[-1].version


def _version(conn: Connection) -> int:
    conn.execute(ddl("CREATE TABLE IF NOT EXISTS schema_version (version {INT} NOT NULL)", conn.dialect))
    row = conn.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
    return int(row["v"]) if row and row["v"] is not None else 0


def migrate(conn: Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply what ``conn``'s database has not had yet; returns the versions applied."""
    applied = []
    for migration in migrations:
        conn.execute("BEGIN IMMEDIATE" if conn.dialect == "sqlite" else "BEGIN")
        try:
            if conn.dialect == "postgresql":
                conn.execute("SELECT pg_advisory_xact_lock(?)", (PG_MIGRATION_LOCK,))
            if _version(conn) >= migration.version:
                conn.execute("COMMIT")
                continue
            for statement in migration.statements:
                conn.execute(ddl(statement, conn.dialect))
            if migration.run is not None:
                migration.run(conn)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (migration.version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied
