"""Signed tokens' state in the index: the denylist of revoked tokens and how many sessions each
token started (its ``max_sessions``).

The denylist is read by every node every ``revocation_poll_s`` (ingest/server/principals.py):
``revoked_since(generation)`` returns the revocations after the last one a node has seen. Each
revocation takes the next ``generation`` under a row lock on ``token_state`` (PostgreSQL holds it
until the commit), so revocations commit in generation order and a reader that has seen
generation N has seen every revocation up to N. The tokens themselves are never stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from storage.database import Connection
from storage.index import Index


@dataclass(frozen=True)
class Revocation:
    jti: str
    revoked_at: float
    by_sub: str | None
    generation: int


class TokenStore:
    def __init__(self, index: Index) -> None:
        self.index = index

    def revoke(self, jti: str, by_sub: str | None) -> bool:
        """Put ``jti`` on the denylist; False if it was there already."""

        def run(conn: Connection) -> bool:
            if conn.execute("SELECT 1 AS one FROM revoked_tokens WHERE jti = ?", (jti,)).fetchone():
                return False
            row = conn.execute(
                "INSERT INTO token_state (id, generation) VALUES (1, 1) ON CONFLICT (id) DO UPDATE"
                " SET generation = token_state.generation + 1 RETURNING generation"
            ).fetchone()
            assert row is not None
            conn.execute(
                "INSERT INTO revoked_tokens (jti, revoked_at, by_sub, generation) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (jti) DO NOTHING",
                (jti, time.time(), by_sub, int(row["generation"])),
            )
            return True

        return self.index.write(run)

    def revoked_since(self, generation: int) -> list[Revocation]:
        """Revocations with a generation above ``generation``, in order."""
        rows = self.index.read(
            lambda c: c.execute(
                "SELECT jti, revoked_at, by_sub, generation FROM revoked_tokens WHERE generation > ? ORDER BY generation",
                (generation,),
            ).fetchall()
        )
        return [Revocation(r["jti"], float(r["revoked_at"]), r["by_sub"], int(r["generation"])) for r in rows]

    def is_revoked(self, jti: str) -> bool:
        row = self.index.read(lambda c: c.execute("SELECT 1 AS one FROM revoked_tokens WHERE jti = ?", (jti,)).fetchone())
        return row is not None

    def use(self, jti: str, max_sessions: int) -> bool:
        """Count one more session started by token ``jti``; False (nothing counted) if it has
        started ``max_sessions`` already. One statement: two nodes cannot both pass the limit."""
        return bool(
            self.index.write(
                lambda c: c.execute(
                    "INSERT INTO token_uses (jti, sessions) VALUES (?, 1) ON CONFLICT (jti) DO UPDATE"
                    " SET sessions = token_uses.sessions + 1 WHERE token_uses.sessions < ?",
                    (jti, max_sessions),
                ).rowcount
            )
        )

    def give_back(self, jti: str) -> None:
        """A session counted by ``use`` could not be started after all."""
        self.index.write(
            lambda c: c.execute("UPDATE token_uses SET sessions = sessions - 1 WHERE jti = ? AND sessions > 0", (jti,))
        )

    def uses(self, jti: str) -> int:
        row = self.index.read(lambda c: c.execute("SELECT sessions FROM token_uses WHERE jti = ?", (jti,)).fetchone())
        return 0 if row is None else int(row["sessions"])
