"""Who the client is behind a reverse proxy: its address and whether it came over https.

``X-Forwarded-For`` and ``X-Forwarded-Proto`` are anyone's to send: they are believed only from
a peer in ``trusted_proxies`` (addresses or networks, e.g. ``127.0.0.1`` for the README's nginx
on the same machine). The client address is then the right-most ``X-Forwarded-For`` entry that is
not itself a trusted proxy (each proxy appends the address it saw, so entries further left were
written by the client and prove nothing). Everything that counts or limits per client (sessions,
connections, previews, logs) and the cookie's ``Secure`` flag ask this module, so one rule holds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``trusted_proxies`` as networks; a bad entry raises ValueError naming it."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"trusted_proxies entry {entry!r} is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8)"
            ) from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class Proxies:
    """The trusted proxies of one server (from ``Settings.trusted_proxies``)."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[str]) -> Proxies:
        return cls(parse_networks(entries))

    def trusted(self, peer: str | None) -> bool:
        address = _address(peer) if peer else None
        return address is not None and any(address in network for network in self.networks)

    def client_address(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The client's address: the peer's, or behind trusted proxies the first untrusted hop
        of ``X-Forwarded-For`` read from the right. ``"unknown"`` if there is none."""
        if not self.trusted(peer):
            return peer or "unknown"
        hops = [h for h in ",".join(_all(headers, "X-Forwarded-For")).split(",") if h.strip()]
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:  # garbage from somewhere: the proxy's own view is all we know
                return peer or "unknown"
            if not any(address in network for network in self.networks):
                return str(address)
        return peer or "unknown"

    def secure(self, peer: str | None, headers: Mapping[str, str], direct: bool) -> bool:
        """Whether the client's connection is https: ``direct`` (TLS to this server), or
        ``X-Forwarded-Proto: https`` from a trusted proxy (its last value: the nearest proxy's)."""
        if direct:
            return True
        if not self.trusted(peer):
            return False
        values = [v.strip().lower() for v in ",".join(_all(headers, "X-Forwarded-Proto")).split(",") if v.strip()]
        return bool(values) and values[-1] == "https"


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)  # multidict (aiohttp): every copy of the header
    if getall is not None:
        values: list[str] = getall(name, [])
        return values
    value = headers.get(name)
    return [] if value is None else [value]


def request_client(proxies: Proxies, request: Any) -> str:
    """The client address of an aiohttp request."""
    return proxies.client_address(request.remote, request.headers)


def request_secure(proxies: Proxies, request: Any) -> bool:
    """Whether an aiohttp request reached us over https (directly or through a trusted proxy)."""
    return proxies.secure(request.remote, request.headers, request.transport is not None and
                          request.transport.get_extra_info("sslcontext") is not None)  # fmt: skip


def environ_client(proxies: Proxies, environ: Mapping[str, Any]) -> str:
    """The client address of a Socket.IO connection (its handshake's HTTP request)."""
    request = environ.get("aiohttp.request")
    if request is not None:
        return request_client(proxies, request)
    return str(environ.get("REMOTE_ADDR") or "unknown")
