"""One owner per recording session across nodes: the interface the recording side calls, owned
here (the server's cluster, ingest/server/cluster.py, implements it; a single node has none)."""

from __future__ import annotations

from typing import Any, Protocol

from storage.leases import Lease


class Ownership(Protocol):
    node: str

    async def claim(self, session_id: str, new: bool = False) -> Lease:
        """Own the session here: a new one at once; another node's by hand-over, or once that
        node's lease expired (then what it never made durable is forgotten, the client resends).
        Raises ``CapacityError`` (busy) if that cannot be done now."""
        ...

    def lease(self, session_id: str) -> Lease | None:
        """The lease this node holds on the session (chunk commits check it)."""
        ...

    def lost(self, session_id: str) -> None:
        """A commit found the lease gone: forget it here."""
        ...

    async def peers(self) -> list[dict[str, Any]] | None:
        """The nodes alive, this one included; None while the registry cannot be read."""
        ...
