"""The webhooks' durable outbox in the index: deliveries written when their event happens,
deleted once a receiver took them (at-least-once; the ``delivery_id`` lets receivers dedupe).

Order: deliveries with the same ``url`` and ``ordering`` key (a session's id; "" for events of
no session) go out in ``id`` order: one is claimable only when no earlier one of its key is left.
Several nodes share one outbox: a node claims rows with a conditional UPDATE (``claimed_until``
past, checked again on the row itself, which PostgreSQL re-evaluates after waiting for a row
another node is claiming), so each row is being delivered by one node at a time; a node that
dies mid-delivery loses its claim when ``claimed_until`` passes, and another delivers the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.database import Connection
from storage.index import Index

_COLUMNS = "id, delivery_id, url, event, body, created_at, attempts"


@dataclass(frozen=True)
class Delivery:
    id: int
    delivery_id: str
    url: str
    event: str
    body: str
    created_at: float
    attempts: int


@dataclass(frozen=True)
class NewDelivery:
    delivery_id: str
    url: str
    event: str
    ordering: str
    body: str
    created_at: float


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    oldest_created_at: float | None
    next_due: float | None


def _delivery(row: dict[str, Any]) -> Delivery:
    return Delivery(int(row["id"]), str(row["delivery_id"]), str(row["url"]), str(row["event"]), str(row["body"]),
                    float(row["created_at"]), int(row["attempts"]))  # fmt: skip


class Outbox:
    def __init__(self, index: Index) -> None:
        self.index = index

    def add(self, deliveries: list[NewDelivery], max_rows: int) -> int:
        """Write ``deliveries``; if the outbox then holds more than ``max_rows``, the oldest
        beyond it are dropped. Returns how many were dropped."""

        def run(conn: Connection) -> int:
            for d in deliveries:
                conn.execute(
                    "INSERT INTO webhook_outbox (delivery_id, url, event, ordering, body, created_at, next_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (delivery_id) DO NOTHING",
                    (d.delivery_id, d.url, d.event, d.ordering, d.body, d.created_at, d.created_at),
                )
            row = conn.execute("SELECT COUNT(*) AS n FROM webhook_outbox").fetchone()
            excess = (int(row["n"]) if row else 0) - max_rows
            if excess <= 0:
                return 0
            return conn.execute(
                "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox ORDER BY id LIMIT ?)", (excess,)
            ).rowcount

        return self.index.write(run) if deliveries else 0

    def claim(self, node: str, now: float, limit: int, hold_s: float) -> list[Delivery]:
        """Up to ``limit`` deliveries due now whose earlier ones (same url and key) are gone,
        claimed by ``node`` until ``now + hold_s``."""
        if limit <= 0:
            return []
        rows = self.index.write(
            lambda c: c.execute(
                "UPDATE webhook_outbox SET claimed_by = ?, claimed_until = ? WHERE id IN ("
                " SELECT o.id FROM webhook_outbox o WHERE o.next_at <= ?"
                " AND (o.claimed_until IS NULL OR o.claimed_until < ?)"
                " AND NOT EXISTS (SELECT 1 FROM webhook_outbox e WHERE e.url = o.url AND e.ordering = o.ordering"
                " AND e.id < o.id) ORDER BY o.id LIMIT ?)"
                " AND (claimed_until IS NULL OR claimed_until < ?) RETURNING " + _COLUMNS,
                (node, now + hold_s, now, now, limit, now),
            ).fetchall()
        )
        return sorted((_delivery(r) for r in rows), key=lambda d: d.id)

    def delivered(self, ids: list[int]) -> None:
        if ids:
            marks = ", ".join("?" for _ in ids)
            self.index.write(lambda c: c.execute(f"DELETE FROM webhook_outbox WHERE id IN ({marks})", tuple(ids)))

    def retry_later(self, delivery_id: int, next_at: float, error: str) -> None:
        """A failed attempt: counted, the claim released, tried again at ``next_at``."""
        self.index.write(
            lambda c: c.execute(
                "UPDATE webhook_outbox SET attempts = attempts + 1, next_at = ?, claimed_by = NULL,"
                " claimed_until = NULL, last_error = ? WHERE id = ?",
                (next_at, error[:500], delivery_id),
            )
        )

    def stats(self) -> OutboxStats:
        row = self.index.read(
            lambda c: c.execute(
                "SELECT COUNT(*) AS n, MIN(created_at) AS oldest, MIN(next_at) AS due FROM webhook_outbox"
            ).fetchone()
        )
        if row is None:
            return OutboxStats(0, None, None)
        oldest, due = row["oldest"], row["due"]
        return OutboxStats(int(row["n"]), None if oldest is None else float(oldest), None if due is None else float(due))

    def pending(self) -> list[Delivery]:
        """Every delivery left, in order (for the operator and the tests)."""
        rows = self.index.read(lambda c: c.execute(f"SELECT {_COLUMNS} FROM webhook_outbox ORDER BY id").fetchall())
        return [_delivery(r) for r in rows]
