"""The audit trail: one JSON line per access to session data (listing, detail, download, preview,
export, landmarks, snapshots, delete, hold) and per gallery or token change, in the file the
setting ``audit_log`` names, for the operator to ship (Vector, Fluent Bit, Filebeat read it).

A line: ``{"at", "sub", "role", "jti", "method", "route", "path", "session_id", "status",
"client"}`` plus what a change names (the token minted: its ``jti``, ``sub``, ``role``).
Never a token (the URL's query is not logged, and ``?token=`` is answered with a redirect that
drops it before anything is logged), never a body. Lines are written by a thread of their own
from a bounded queue (``audit_queue``): a slow disk delays no request; a full queue drops the
line and counts it (``camingest_audit_dropped_total``) and the operator log says so.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from ingest.metrics import Metrics
from ingest.server.principals import Principal
from ingest.server.proxies import Proxies, request_client
from storage.store import utc_now

log = logging.getLogger("camingest.audit")


def audited(method: str, route: str) -> bool:
    """Which requests leave a line: session data (every /api/sessions route), gallery changes
    and photos (biometric data), tokens."""
    if route.startswith("/api/sessions") or route.startswith("/api/tokens"):
        return True
    return route.startswith("/api/gallery") and (method not in ("GET", "HEAD") or route.endswith("/photo"))


class AuditLog:
    def __init__(self, path: str | None, max_queued: int, metrics: Metrics, proxies: Proxies) -> None:
        self.path = path
        self.proxies = proxies
        self._queue: queue.Queue[str | None] = queue.Queue(max_queued)
        self._thread: threading.Thread | None = None
        self.dropped = Counter("camingest_audit_dropped", "Audit lines dropped (the writer's queue was full)",
                               registry=metrics.registry)  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def start(self) -> None:
        """Open the file (blocking: call from a thread) and start the writer; ValueError naming
        the file if it cannot be written."""
        if self.path is not None and self._thread is None:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise ValueError(f"audit_log {self.path}: {exc.strerror or exc}") from None
            self._thread = threading.Thread(target=self._run, args=(fd, self.path), name="audit-log", daemon=True)
            self._thread.start()

    def record(self, principal: Principal | None, what: dict[str, Any]) -> None:
        """One line (never blocks)."""
        if self.path is None:
            return
        line = {"at": utc_now(), **(principal.audit() if principal else {"sub": None, "role": None, "jti": None}), **what}
        try:
            self._queue.put_nowait(json.dumps(line, separators=(",", ":"), default=str))
        except queue.Full:
            self.dropped.inc()
            log.warning("audit: a line was dropped (the writer is behind; audit_queue)")

    def http(self, principal: Principal | None, request: web.Request, route: str, status: int,
             extra: dict[str, Any] | None = None) -> None:  # fmt: skip
        """A request's line, if its route is audited."""
        if self.path is None or not audited(request.method, route):
            return
        what: dict[str, Any] = {"method": request.method, "route": route, "path": request.path,
                                "session_id": request.match_info.get("session_id"), "status": status,
                                "client": request_client(self.proxies, request)}  # fmt: skip
        if extra:
            what.update(extra)
        self.record(principal, what)

    def _run(self, fd: int, path: str) -> None:
        with os.fdopen(fd, "a", encoding="utf-8") as out:
            while True:
                line = self._queue.get()
                lines = [line]
                while len(lines) < 1000:
                    try:
                        lines.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                done = None in lines
                text = "".join(item + "\n" for item in lines if item is not None)
                try:
                    out.write(text)
                    out.flush()
                except OSError as exc:
                    log.error("audit: %d lines not written to %s: %s", len(lines), path, exc)
                if done:
                    os.fsync(out.fileno())
                    return

    def close(self) -> None:
        """Write what is queued, then stop (blocking: call from a thread)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


AUDIT = web.AppKey("audit", AuditLog)
AUDIT_PENDING = "audit_pending"  # request key: (principal, route) of a line not yet written


async def audit_streamed(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """``on_response_prepare``: a streamed answer's line (a preview) is written when its headers
    go out, not when the stream ends (access.py writes the others after the handler)."""
    if not isinstance(request, web.Request):
        return
    pending = request.pop(AUDIT_PENDING, None)
    audit = request.app.get(AUDIT)
    if pending is not None and audit is not None:
        principal, route = pending
        audit.http(principal, request, route, response.status, request.get("audit"))
