"""Issue 24 across nodes: two `camingest serve` nodes of one cluster (Redis, PostgreSQL,
SeaweedFS; real engines from tests/engines.py). A token revoked on one node is refused by the
other on its next HTTP request, its next chunk on a live connection and its next connection,
within revocation_poll_s (the index's denylist every node polls); a token minted by one node is
honoured by the other, and a recorder's session is unknown to another recorder on either node.
The webhooks' outbox in PostgreSQL, both nodes delivering: every event once, in order per
session, signed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.client import Client, record, run, wait_until
from tests.conftest import ServerProcess, free_port, load_recording
from tests.tokens import ADMIN, KEYS, call, connect_refusal, jti_of, keyfile, mint, refusal
from tests.webhooks import Receiver, metrics, webhook_args

pytestmark = pytest.mark.slow
RECORDING = load_recording("webcam_vp8_kf1s_250ms")
FAST_RETRIES = {"CAMINGEST_WEBHOOK_RETRY_S": "0.2", "CAMINGEST_WEBHOOK_MAX_RETRY_S": "1"}


def start_nodes(tmp_path: Path, postgres: Any, s3: Any, redis: Any, *extra: str,
                env: dict[str, str] | None = None) -> list[ServerProcess]:  # fmt: skip
    keys = keyfile(tmp_path, **KEYS)
    nodes = []
    for i in range(2):
        nodes.append(ServerProcess(
            tmp_path / f"data-node{i}", "--redis", redis.url, "--index", postgres.dsn, "--store", s3.store_url,
            "--s3-endpoint", s3.endpoint, "--node-id", f"node{i}", "--no-analysis", "--token", ADMIN,
            "--secret-file", str(keys), *extra, port=free_port(),
            env={**s3.env, "CAMINGEST_SEGMENT_S": "1", "CAMINGEST_LEASE_S": "4", "CAMINGEST_SESSION_IDLE_S": "600",
                 **(env or {})},
        ).start())  # fmt: skip
    return nodes


def test_a_revocation_on_one_node_reaches_the_other(tmp_path, postgres, s3, redis):
    nodes = start_nodes(tmp_path, postgres, s3, redis)
    first, second = nodes[0].url, nodes[1].url

    async def scenario() -> None:
        # minted by the first node, honoured by the second
        status, minted = await call("POST", first + "/api/tokens", ADMIN, json={"role": "recorder", "sub": "p-a",
                                                                                 "read": True})  # fmt: skip
        assert status == 201
        token = minted["token"]
        other = mint(KEYS["k1"], "k1", sub="p-b", read=True)
        async with Client(second, token=token) as client:
            session = await client.start(RECORDING.meta["mime"])
            await client.send_all(session, RECORDING.chunks[:3])
            sid = session["session_id"]
            for url in (first, second):  # another recorder: unknown on either node
                assert await call("GET", f"{url}/api/sessions/{sid}", other) == (
                    404, refusal(f"unknown session {sid!r}", "unknown_session"))  # fmt: skip
                status, own = await call("GET", f"{url}/api/sessions/{sid}", token)
                assert status == 200 and own["sub"] == "p-a"

            # revoked on the first node; the second refuses it within revocation_poll_s
            gone = refusal(f"token {minted['jti']} was revoked")
            revoked_at = time.monotonic()
            status, body = await call("DELETE", f"{first}/api/tokens/{minted['jti']}", ADMIN)
            assert (status, body) == (200, {"ok": True, "revoked": minted["jti"], "already": False})
            assert await call("GET", first + "/api/me", token) == (401, gone)  # the node that revoked: at once

            async def refused_by_the_second() -> bool:
                return await call("GET", second + "/api/me", token) == (401, gone)

            await wait_until(refused_by_the_second, "the second node refusing the revoked token", timeout=10,
                             interval=0.02)  # fmt: skip
            print(f"revocation reached the other node after {time.monotonic() - revoked_at:.3f} s "
                  "(revocation_poll_s 0.5)")  # fmt: skip
            # the live connection on the second node: its next chunk and its next start
            assert await client.chunk(session, 3, RECORDING.chunks[3]) == {"ok": False, **gone}
            assert await client.call("start", {"mime": RECORDING.meta["mime"]}) == {"ok": False, **gone}
        assert await connect_refusal(second, token) == f"unauthorized: {gone['error']['message']}"
        # what it recorded before is kept, and revoking it again says so
        status, raw = await call("GET", f"{second}/api/sessions/{sid}/raw.webm", ADMIN)
        assert (status, raw) == (200, b"".join(RECORDING.chunks[:3]))
        status, body = await call("DELETE", f"{second}/api/tokens/{jti_of(token)}", ADMIN)
        assert (status, body) == (200, {"ok": True, "revoked": minted["jti"], "already": True})

    try:
        run(scenario())
    finally:
        for node in nodes:
            node.stop()
    for node in nodes:
        assert "Traceback" not in node.log.read_text()


def test_webhooks_from_two_nodes_once_each_in_order(tmp_path, postgres, s3, redis):
    """One session recorded on each node, the first deleted through the other: both nodes
    deliver from the one outbox in PostgreSQL, each delivery once (the outbox empties with no
    duplicate at the receiver), each session's events in order, every signature verifying."""

    async def scenario() -> None:
        receiver = await Receiver().start()
        nodes = start_nodes(tmp_path, postgres, s3, redis, *webhook_args(receiver), env=FAST_RETRIES)
        try:
            sessions = []
            for node in nodes:
                async with Client(node.url, token=ADMIN) as client:
                    sessions.append(await record(node.url, RECORDING, 0, client=client))
            first, second = (s["session_id"] for s in sessions)
            assert (await call("DELETE", f"{nodes[1].url}/api/sessions/{first}", ADMIN))[0] == 200
            await wait_until(lambda: len(receiver.unique()) == 5, "the 5 deliveries",
                             seen=lambda: [r.event for r in receiver.received])  # fmt: skip

            async def outbox_empty() -> bool:
                return all([(await metrics(node.url, ADMIN))["camingest_webhook_outbox_depth"] == 0 for node in nodes])

            await wait_until(outbox_empty, "the outbox empty on both nodes")  # nothing left to deliver again
        finally:
            for node in nodes:
                node.stop()
            await receiver.stop()
        assert len(receiver.received) == 5, [(r.delivery_id, r.event) for r in receiver.received]
        assert all(r.verified and r.headers_agree for r in receiver.received)
        by_session = {sid: [r.event for r in receiver.received if r.body["session"]["id"] == sid]
                      for sid in (first, second)}  # fmt: skip
        assert by_session == {first: ["session.started", "session.stopped", "session.deleted"],
                              second: ["session.started", "session.stopped"]}  # fmt: skip
        for node in nodes:
            assert "Traceback" not in node.log.read_text()

    run(scenario())
