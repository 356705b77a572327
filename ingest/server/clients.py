"""Who a client is, for every per-client limit: one function, ``Clients.key``.

Connections, recording sessions, preview viewers and the log's repeat lines are all counted per
client key. Today the key is the client's address (ingest/server/proxies.py: the peer's, or the
one trusted proxies saw); a principal named by a token would be chosen here, and every limit
follows it. ``PerClient`` counts what each key holds against a limit, so one client cannot take
what everyone shares.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

from ingest.exceptions import CapacityError
from ingest.server.proxies import Proxies, request_client


class Clients:
    def __init__(self, trusted_proxies: tuple[str, ...]) -> None:
        self.proxies = Proxies.of(trusted_proxies)

    def key(self, request: Any) -> str:
        """The client key of an aiohttp request (the one place that decides who a client is)."""
        return request_client(self.proxies, request)

    def environ_key(self, environ: Mapping[str, Any]) -> str:
        """The client key of a Socket.IO connection (its handshake's HTTP request)."""
        request = environ.get("aiohttp.request")
        return self.key(request) if request is not None else str(environ.get("REMOTE_ADDR") or "unknown")


class PerClient:
    """How many of ``what`` each client key holds, at most ``limit`` (``setting`` names it)."""

    def __init__(self, limit: int, what: str, setting: str) -> None:
        self.limit = limit
        self.what = what
        self.setting = setting
        self._held: collections.Counter[str] = collections.Counter()

    def __getitem__(self, key: str) -> int:
        return self._held[key]

    def refusal(self, key: str) -> CapacityError | None:
        held = self._held[key]
        if held < self.limit:
            return None
        return CapacityError(f"this client ({key}) holds {held} {self.what}, the limit ({self.setting}) is "
                             f"{self.limit}; close one first")  # fmt: skip

    def check(self, key: str) -> None:
        refusal = self.refusal(key)
        if refusal is not None:
            raise refusal

    def add(self, key: str) -> None:
        self._held[key] += 1

    def remove(self, key: str) -> None:
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]
