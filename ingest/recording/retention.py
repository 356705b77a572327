"""Retention: sessions that ended more than ``retention_days`` ago are deleted, with everything
of them (bytes, landmarks, snapshots, exports), logged, and said to the webhooks
(``session.deleted`` with reason ``retention``); a held session (``PUT
/api/sessions/{id}/hold``) is kept. The server checks every ``retention_check_s`` (and at start);
``camingest prune --older-than 30d [--dry-run]`` does the same once, from the command line.

"Now" is the server's clock shifted by ``clock_offset_s`` (0 in production): a drill or a test
runs a server "31 days later" instead of waiting for them; the times sessions end are written
with the same shifted clock, so a session recorded on that server is young to it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter

from ingest.background import BackgroundTasks
from ingest.config import Settings
from ingest.exceptions import BadRequestError
from ingest.metrics import Metrics
from storage.errors import StoreUnavailableError, UnknownSessionError
from storage.store import SessionStore

log = logging.getLogger("camingest.sessions")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_RE = re.compile(r"\A([0-9]+(?:\.[0-9]+)?)([smhd])\Z")


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` as seconds; BadRequestError naming the value."""
    match = DURATION_RE.match(text.strip())
    if not match:
        raise BadRequestError(f"{text[:40]!r} is not an age; write it as a number and a unit: 30d, 12h, 90m, 45s")
    return float(match.group(1)) * UNITS[match.group(2)]


def cutoff(older_than_s: float, clock_offset_s: float, now: float | None = None) -> str:
    """The instant (as the index writes times) before which a session ended ``older_than_s`` ago."""
    when = (time.time() if now is None else now) + clock_offset_s - older_than_s
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def expired(store: SessionStore, older_than_s: float, clock_offset_s: float,
            include_held: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """Sessions that ended more than ``older_than_s`` ago (blocking), oldest first."""
    return store.ended_before(cutoff(older_than_s, clock_offset_s), include_held)


class Retention:
    """The server's periodic pass; ``delete(session_id, reason)`` deletes one session the way
    the HTTP route does (True if it was deleted here)."""

    def __init__(self, settings: Settings, store: SessionStore, metrics: Metrics,
                 delete: Callable[[str, str], Awaitable[bool]]) -> None:  # fmt: skip
        self.settings = settings
        self.store = store
        self.delete = delete
        self.background = BackgroundTasks(log)
        self.passes = Counter("camingest_retention_passes", "Retention passes completed", registry=metrics.registry)
        self.deleted = Counter("camingest_retention_deleted", "Sessions deleted by retention", registry=metrics.registry)

    @property
    def enabled(self) -> bool:
        return self.settings.retention_days > 0

    async def run_once(self) -> list[str]:
        """Delete every session past retention that is not held; their ids."""
        older_than = self.settings.retention_days * 86400
        found = await asyncio.to_thread(expired, self.store, older_than, self.settings.clock_offset_s)
        deleted = []
        for row in found:
            try:
                if await self.delete(row["id"], "retention"):
                    deleted.append(row["id"])
                    self.deleted.inc()
                    log.info("session %s deleted by retention: it ended at %s, more than %g days ago",
                             row["id"], row["ended_at"], self.settings.retention_days)  # fmt: skip
            except UnknownSessionError:
                continue  # another node (or a person) deleted it meanwhile
        self.passes.inc()
        return deleted

    def start(self) -> None:
        if self.enabled:
            self.background.spawn(self._run(), "retention")

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except (StoreUnavailableError, OSError) as exc:
                log.warning("retention pass failed (%s); again in %g s", exc, self.settings.retention_check_s)
            except Exception:  # logged, tried again: the pass never dies
                log.exception("retention pass failed")
            await asyncio.sleep(self.settings.retention_check_s)

    async def close(self) -> None:
        await self.background.cancel()
