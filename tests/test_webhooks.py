"""Webhooks (issue 24) against a real receiver in the test process: retried through 500s and an
outage, every event exactly once per delivery id after dedupe, in order per session, signatures
that verify; an outbox that survives kill -9; a receiver that never answers delays no ack."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time

import aiohttp

from tests.client import Client, export_mp4, record, run, wait_for_summary, wait_until
from tests.conftest import IMAGES, load_recording
from tests.webhooks import Receiver, metrics, webhook_args

RECORDING = load_recording("webcam_vp8_kf1s_250ms")
FAST_RETRIES = {"CAMINGEST_WEBHOOK_RETRY_S": "0.2", "CAMINGEST_WEBHOOK_MAX_RETRY_S": "1"}
SESSION_ORDER = ["session.started", "session.stopped", "session.analysed", "export.done", "session.deleted"]


def test_deliveries_survive_500s_and_an_outage_once_each_in_order_signed(server_factory):
    """The receiver answers 500 to the first 3 deliveries, is then down 10 s, then up: after
    dedupe every event arrived exactly once, a session's in the order they happened, each
    signature verifies, and each body says what happened."""

    async def scenario() -> None:
        receiver = await Receiver(fail_first=3).start()
        server = server_factory("--workers", "1", *webhook_args(receiver), env=FAST_RETRIES)
        url = server.url
        async with aiohttp.ClientSession() as http:  # enrolled first: the session's faces are named
            form = aiohttp.FormData()
            form.add_field("name", "Barack Obama")
            form.add_field("file", (IMAGES / "obama.jpg").read_bytes(), filename="obama.jpg", content_type="image/jpeg")
            async with http.post(f"{url}/api/gallery", data=form) as r:
                assert r.status == 201, await r.text()
        session = await record(url, RECORDING, 0)
        sid = session["session_id"]
        await wait_until(lambda: receiver.failed >= 3, "3 deliveries answered 500")
        await receiver.stop()
        down_at = time.monotonic()
        # while it is down: landmarks complete, an export, the deletion
        summary = await wait_for_summary(f"{url}/api/sessions/{sid}", lambda s: s["analysed_frames"] == s["frames"]
                                         and s["skipped_frames"] == 0 and "fill" not in s, "landmarks complete")  # fmt: skip
        await export_mp4(url, sid)
        async with aiohttp.ClientSession() as http:
            # every event so far is in the outbox (the receiver took none) before the deletion
            await wait_until(async_depth(url, 5), "5 deliveries in the outbox")
            async with http.delete(f"{url}/api/sessions/{sid}") as r:
                assert r.status == 200
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - down_at)))  # the outage lasts 10 s
        await receiver.start()
        await wait_until(lambda: len(receiver.unique()) == 6, "6 deliveries after the outage", timeout=60,
                         seen=lambda: [r.event for r in receiver.received])  # fmt: skip
        await wait_until(async_depth(url, 0), "an empty outbox")
        m = await metrics(url)
        await receiver.stop()

        unique = receiver.unique()
        print(f"received {len(receiver.received)} deliveries ({len(unique)} distinct) after {receiver.attempts} attempts")
        assert sorted(r.event for r in unique.values()) == sorted([*SESSION_ORDER, "gallery.changed"])
        assert all(r.verified and r.headers_agree for r in receiver.received)
        assert [r.event for r in unique.values() if r.body.get("session", {}).get("id") == sid] == SESSION_ORDER
        by_event = {r.event: r.body for r in unique.values()}
        assert by_event["session.started"]["session"]["state"] == "recording"
        assert by_event["session.stopped"]["session"]["ended_by"] == "client"
        analysed = by_event["session.analysed"]
        assert analysed["session"]["analysed_frames"] == summary["frames"] == RECORDING.expected["video_frames"]
        assert [p["name"] for p in analysed["people"]] == ["Barack Obama"] and analysed["people"][0]["frames"] > 0
        assert by_event["export.done"]["export"]["url"] == f"/api/sessions/{sid}/exports/none.mp4"
        assert by_event["session.deleted"]["reason"] == "deleted"
        assert by_event["session.deleted"]["session"]["id"] == sid
        assert by_event["gallery.changed"]["change"] == "added"
        assert by_event["gallery.changed"]["person"]["name"] == "Barack Obama"
        assert m["camingest_webhook_deliveries_total"] == len(receiver.received)
        assert m["camingest_webhook_failures_total"] >= 3  # the 500s, then refused connections
        assert m["camingest_webhook_outbox_depth"] == 0

    run(scenario())


def async_depth(url: str, depth: int):
    async def check() -> bool:
        return (await metrics(url))["camingest_webhook_outbox_depth"] == depth

    return check


def test_the_outbox_survives_kill_9(server_factory, tmp_path):
    """Five events wait in the outbox (the receiver is not there); kill -9; after the restart
    all five are delivered, with the delivery ids they had in the outbox."""
    data = tmp_path / "data"

    async def scenario() -> None:
        receiver = Receiver()  # not started: its port refuses
        server = server_factory("--no-analysis", *webhook_args(receiver), data=data, env=FAST_RETRIES)
        first = await record(server.url, RECORDING, 0)
        second = await record(server.url, RECORDING, 0, last=4)
        async with aiohttp.ClientSession() as http, http.delete(f"{server.url}/api/sessions/{first['session_id']}") as r:
            assert r.status == 200
        await wait_until(async_depth(server.url, 5), "5 deliveries in the outbox")
        with sqlite3.connect(data / "index.sqlite3") as db:
            waiting = [row for row in db.execute("SELECT delivery_id, event FROM webhook_outbox ORDER BY id")]
        server.kill()
        await receiver.start()
        server = server_factory("--no-analysis", *webhook_args(receiver), data=data, env=FAST_RETRIES)
        await wait_until(lambda: len(receiver.unique()) == 5, "the 5 deliveries after the restart",
                         seen=lambda: [r.event for r in receiver.received])  # fmt: skip
        await receiver.stop()
        # the same deliveries (sessions' deliveries go side by side, each session's in order)
        assert sorted((r.delivery_id, r.event) for r in receiver.unique().values()) == sorted(waiting)
        for session in (first, second):
            events = [r.event for r in receiver.unique().values() if r.body["session"]["id"] == session["session_id"]]
            assert events == ([*SESSION_ORDER[:2], "session.deleted"] if session is first else SESSION_ORDER[:2])

    run(scenario())


def test_a_receiver_that_never_answers_delays_no_ack(server_factory, tmp_path):
    """With a receiver that accepts and never answers, every chunk is acked ok (never busy) and
    the deliveries wait in the outbox; the ack times beside a server without webhooks are
    printed (the measurement with more sessions is bench/webhook_bench.py)."""

    async def scenario() -> None:
        receiver = await Receiver(hang=True).start()
        hooked = server_factory("--no-analysis", *webhook_args(receiver),
                                env={**FAST_RETRIES, "CAMINGEST_WEBHOOK_TIMEOUT_S": "2"})  # fmt: skip
        plain = server_factory("--no-analysis", data=tmp_path / "without-webhooks")

        async def acks(url: str, sessions: int) -> list[float]:
            times: list[float] = []
            async with Client(url) as client:
                for _ in range(sessions):
                    session = await client.start(RECORDING.meta["mime"])
                    for seq, chunk in enumerate(RECORDING.chunks):
                        began = time.perf_counter()
                        ack = await client.chunk(session, seq, chunk)
                        times.append(time.perf_counter() - began)
                        assert ack["ok"], ack
                    assert (await client.stop(session))["ok"]
            return times

        with_hooks, without = await asyncio.gather(acks(hooked.url, 4), acks(plain.url, 4))
        await wait_until(async_failures(hooked.url), "a delivery timed out")
        m = await metrics(hooked.url)
        await receiver.stop()
        p99 = {name: statistics.quantiles(times, n=100)[98] * 1000 for name, times in (("webhooks", with_hooks),
                                                                                      ("none", without))}  # fmt: skip
        print(f"ack p99 with a receiver that never answers: {p99['webhooks']:.1f} ms, without webhooks: "
              f"{p99['none']:.1f} ms ({len(with_hooks)} acks each)")  # fmt: skip
        assert len(with_hooks) == len(without) == 4 * len(RECORDING.chunks)
        assert m["camingest_webhook_deliveries_total"] == 0
        assert m["camingest_webhook_outbox_depth"] == 8  # started + stopped of 4 sessions, all waiting
        assert receiver.attempts >= 1

    run(scenario())


def async_failures(url: str):
    async def check() -> bool:
        return (await metrics(url))["camingest_webhook_failures_total"] >= 1

    return check
