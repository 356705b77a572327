"""The client behind a reverse proxy (ingest/server/proxies.py): headers believed only from a
trusted proxy, the right-most untrusted X-Forwarded-For hop, https from X-Forwarded-Proto."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from ingest.config import Settings
from ingest.server.proxies import Proxies

PROXIES = Proxies.of(["127.0.0.1", "10.0.0.0/8", "::1"])


def headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def test_headers_from_an_untrusted_peer_are_ignored() -> None:
    spoofed = headers(("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"))
    assert PROXIES.client_address("203.0.113.9", spoofed) == "203.0.113.9"
    assert PROXIES.secure("203.0.113.9", spoofed, direct=False) is False
    assert Proxies().client_address("127.0.0.1", spoofed) == "127.0.0.1"  # none configured: none believed


def test_the_right_most_untrusted_hop_is_the_client() -> None:
    # the client wrote 6.6.6.6 itself; nginx (127.0.0.1) appended what it saw, 198.51.100.7,
    # after another trusted proxy of ours (10.1.2.3)
    chain = headers(("X-Forwarded-For", "6.6.6.6, 198.51.100.7, 10.1.2.3"))
    assert PROXIES.client_address("127.0.0.1", chain) == "198.51.100.7"
    two_headers = headers(("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.7"))
    assert PROXIES.client_address("127.0.0.1", two_headers) == "198.51.100.7"
    assert PROXIES.client_address("127.0.0.1", headers(("X-Forwarded-For", "10.0.0.5"))) == "127.0.0.1"
    assert PROXIES.client_address("127.0.0.1", headers(("X-Forwarded-For", "not-an-ip"))) == "127.0.0.1"
    assert PROXIES.client_address("::ffff:127.0.0.1", headers(("X-Forwarded-For", "[2001:db8::1]:4711"))) == "2001:db8::1"
    assert PROXIES.client_address(None, headers()) == "unknown"


def test_https_from_the_nearest_trusted_proxy() -> None:
    assert PROXIES.secure("127.0.0.1", headers(("X-Forwarded-Proto", "https")), direct=False) is True
    assert PROXIES.secure("127.0.0.1", headers(("X-Forwarded-Proto", "https, http")), direct=False) is False
    assert PROXIES.secure("127.0.0.1", headers(), direct=False) is False
    assert PROXIES.secure("203.0.113.9", headers(), direct=True) is True


def test_a_bad_entry_is_named() -> None:
    with pytest.raises(ValueError) as raised:
        Settings.from_env({"CAMINGEST_TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/33"})
    assert str(raised.value) == "trusted_proxies entry '10.0.0.0/33' is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8)"
