"""Leases: one owner per session at a time, across the nodes of a cluster (SCALE.md).

A lease row says which node owns a session (recording it, or filling and finalizing it after
stop) until when, by the index's own clock (no two nodes' clocks compared). It is taken with one
conditional statement (free, expired, or already ours), renewed every ``lease_s / 3`` and
released on hand-over; its ``epoch`` grows at every change of owner. Every chunk commit of a
clustered node checks, inside its transaction, that the node still holds the lease of that epoch
(``commit_chunk``), and so does every change of the session's state (``end_session``,
``set_state``: a decoding failure): a node cut off from the others (a network split) that lost
its lease to another can never commit a chunk of that session nor fail or stop it, whatever it
believes. A node holding no lease of the session at all is refused before it tries
(``SessionRegistry.fence``: never an unconditional change on a cluster).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.database import Connection
from storage.errors import IngestError
from storage.index import Index


class LeaseLostError(IngestError):
    """This node does not own the session (any more): another node records it."""

    code = "busy"
    http_status = 503


def now_sql(dialect: str) -> str:
    """The index's clock in seconds since the epoch, as SQL."""
    if dialect == "postgresql":
        return "EXTRACT(EPOCH FROM clock_timestamp())"
    return "((julianday('now') - 2440587.5) * 86400.0)"


@dataclass(frozen=True)
class Lease:
    session_id: str
    node: str
    epoch: int


@dataclass(frozen=True)
class Holder:
    node: str
    expires_in_s: float  # <= 0: expired
    epoch: int


class Leases:
    def __init__(self, index: Index) -> None:
        self.index = index
        self.now = now_sql(index.dialect)

    def acquire(self, session_id: str, node: str, lease_s: float) -> Lease | None:
        """Take (or keep) the session's lease; None while another node's lease runs."""

        def take(conn: Connection) -> Any:
            before = conn.execute("SELECT node, epoch FROM leases WHERE session_id = ?", (session_id,)).fetchone()
            conn.execute(
                f"INSERT INTO leases (session_id, node, expires_at, epoch) VALUES (?, ?, {self.now} + ?, 1)"
                f" ON CONFLICT (session_id) DO UPDATE SET node = excluded.node, expires_at = excluded.expires_at,"
                f" epoch = CASE WHEN leases.node = excluded.node THEN leases.epoch ELSE leases.epoch + 1 END"
                f" WHERE leases.node = excluded.node OR leases.expires_at <= {self.now}",
                (session_id, node, lease_s),
            )
            after = conn.execute("SELECT node, epoch FROM leases WHERE session_id = ?", (session_id,)).fetchone()
            if after and after["node"] == node and (before is None or before["epoch"] != after["epoch"]):
                self.history_entry(conn, Lease(session_id, node, int(after["epoch"])), "acquired")
            return after

        row = self.index.write(take)
        return Lease(session_id, node, int(row["epoch"])) if row and row["node"] == node else None

    def renew(self, node: str, session_ids: list[str], lease_s: float) -> list[str]:
        """Extend this node's leases; returns the sessions whose lease it no longer holds."""
        if not session_ids:
            return []

        def extend(conn: Connection) -> list[str]:
            lost = []
            for session_id in session_ids:
                renewed = conn.execute(
                    f"UPDATE leases SET expires_at = {self.now} + ? WHERE session_id = ? AND node = ?"
                    f" AND expires_at > {self.now}",
                    (lease_s, session_id, node),
                ).rowcount
                if not renewed:
                    lost.append(session_id)
            return lost

        lost: list[str] = self.index.write(extend)
        return lost

    def release(self, session_id: str, node: str) -> None:
        """Give the session up now (hand-over, shutdown, work done): any node may take it."""
        def give_up(conn: Connection) -> None:
            row = conn.execute("SELECT epoch FROM leases WHERE session_id = ? AND node = ?", (session_id, node)).fetchone()
            if row is None:
                return
            conn.execute(f"UPDATE leases SET expires_at = {self.now} - 1 WHERE session_id = ? AND node = ?",
                         (session_id, node))  # fmt: skip
            self.history_entry(conn, Lease(session_id, node, int(row["epoch"])), "released")

        self.index.write(give_up)

    def holder(self, session_id: str) -> Holder | None:
        row = self.index.read(
            lambda c: c.execute(
                f"SELECT node, epoch, expires_at - {self.now} AS expires_in FROM leases WHERE session_id = ?",
                (session_id,),
            ).fetchone()
        )
        return None if row is None else Holder(row["node"], float(row["expires_in"]), int(row["epoch"]))

    def held_by(self, node: str) -> list[str]:
        rows = self.index.read(
            lambda c: c.execute(
                f"SELECT session_id FROM leases WHERE node = ? AND expires_at > {self.now}", (node,)
            ).fetchall()
        )
        return [r["session_id"] for r in rows]

    def history_entry(self, conn: Connection, lease: Lease, what: str) -> None:
        """Record an owner change (for the operator, and the tests' proof of no overlap)."""
        conn.execute(
            f"INSERT INTO lease_history (session_id, node, epoch, what, at) VALUES (?, ?, ?, ?, {self.now})",
            (lease.session_id, lease.node, lease.epoch, what),
        )

    def history(self, session_id: str) -> list[dict[str, Any]]:
        rows = self.index.read(
            lambda c: c.execute(
                "SELECT node, epoch, what, at FROM lease_history WHERE session_id = ? ORDER BY at, epoch",
                (session_id,),
            ).fetchall()
        )
        return [dict(r) for r in rows]


def check_sql(dialect: str) -> str:
    """The condition a clustered node's chunk commit adds: it holds the session's lease."""
    return (
        "EXISTS (SELECT 1 FROM leases WHERE leases.session_id = sessions.id AND leases.node = ? AND leases.epoch = ?"
        f" AND leases.expires_at > {now_sql(dialect)})"
    )
