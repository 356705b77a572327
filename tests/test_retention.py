"""Retention (issue 24) with a clock the test controls (``clock_offset_s``: the server runs "31
days later", no sleeping days): sessions ended longer ago than ``retention_days`` are deleted
with every file of them, held ones kept until let go, young ones kept, each deletion said to the
webhooks; ``camingest prune --older-than`` does the same once (``--dry-run`` only says it)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import aiohttp

from tests.client import Client, export_mp4, record, run, wait_until
from tests.conftest import IMAGES, ROOT, load_recording
from tests.webhooks import SECRET, Receiver, metrics, webhook_args

RECORDING = load_recording("webcam_vp8_kf1s_250ms")
DAY = 86400
LATER = {"CAMINGEST_CLOCK_OFFSET_S": str(31 * DAY)}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ingest.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=120)  # fmt: skip


async def recorded_sessions(url: str, count: int, extras: bool = True) -> list[str]:
    """``count`` sessions; the first (with ``extras``) with a snapshot and an export (their
    files go with it)."""
    ids = []
    async with Client(url) as client:
        for i in range(count):
            session = await record(url, RECORDING, 0, client=client, stop=False)
            if i == 0 and extras:
                ack = await client.call("snapshot", {"session_id": session["session_id"], "token": session["token"],
                                                     "mime": "image/jpeg", "data": (IMAGES / "obama.jpg").read_bytes()})  # fmt: skip
                assert ack["ok"], ack
            assert (await client.stop(session))["ok"]
            ids.append(session["session_id"])
    if not extras:
        return ids
    await export_mp4(url, ids[0])
    return ids


def deletions(receiver: Receiver) -> dict[str, str]:
    """Session id -> reason of each ``session.deleted`` the receiver took (after dedupe)."""
    return {r.body["session"]["id"]: r.body["reason"] for r in receiver.unique().values()
            if r.event == "session.deleted"}  # fmt: skip


async def status_of(url: str, session_id: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/sessions/{session_id}") as r:
        return r.status


def test_retention_deletes_old_sessions_keeps_held_and_young_ones(server_factory, tmp_path):
    data = tmp_path / "data"

    async def scenario() -> None:
        receiver = await Receiver().start()
        server = server_factory("--no-analysis", *webhook_args(receiver), data=data)
        old, held, old2 = await recorded_sessions(server.url, 3)
        async with aiohttp.ClientSession() as http, http.put(f"{server.url}/api/sessions/{held}/hold") as r:
            assert (r.status, await r.json()) == (200, {"ok": True, "session_id": held, "held": True})
        folders = {sid: data / "sessions" / sid for sid in (old, held, old2)}
        assert all(folder.is_dir() for folder in folders.values())
        assert any(folders[old].rglob("*.webm")) and len(list(folders[old].rglob("*"))) > 3  # stream, export, snapshot
        server.stop()

        # 31 days later, 30 days' retention, a pass every half second (and one at start)
        server = server_factory("--no-analysis", *webhook_args(receiver), data=data, env={
            **LATER, "CAMINGEST_RETENTION_DAYS": "30", "CAMINGEST_RETENTION_CHECK_S": "0.5"})  # fmt: skip
        url = server.url
        deleted = functools.partial(deletions, receiver)

        await wait_until(lambda: deleted() == {old: "retention", old2: "retention"}, "the two old sessions deleted",
                         seen=deleted)  # fmt: skip
        assert (await status_of(url, old), await status_of(url, old2), await status_of(url, held)) == (404, 404, 200)
        assert not folders[old].exists() and not folders[old2].exists() and folders[held].is_dir()
        (young,) = await recorded_sessions(url, 1, extras=False)  # it ends "now" on this server's clock: young
        passes = (await metrics(url))["camingest_retention_passes_total"]
        await wait_until(lambda: more_passes(url, passes + 2), "two more retention passes")
        assert (await status_of(url, young), await status_of(url, held)) == (200, 200)
        async with aiohttp.ClientSession() as http, http.delete(f"{url}/api/sessions/{held}/hold") as r:
            assert r.status == 200
        await wait_until(lambda: held in deleted(), "the session let go is deleted", seen=deleted)
        assert deleted() == {old: "retention", old2: "retention", held: "retention"}
        assert not folders[held].exists() and await status_of(url, young) == 200
        assert (await metrics(url))["camingest_retention_deleted_total"] == 3
        await receiver.stop()
        assert server.log.read_text().count("deleted by retention") == 3

    run(scenario())


async def more_passes(url: str, at_least: float) -> bool:
    return (await metrics(url))["camingest_retention_passes_total"] >= at_least


def test_prune_deletes_what_retention_would_and_dry_run_only_says(server_factory, tmp_path):
    data = tmp_path / "data"

    async def setup() -> list[str]:
        server = server_factory("--no-analysis", data=data)
        ids = await recorded_sessions(server.url, 3, extras=False)
        async with aiohttp.ClientSession() as http, http.put(f"{server.url}/api/sessions/{ids[1]}/hold") as r:
            assert r.status == 200
        server.stop()
        return ids

    old, held, old2 = run(setup())
    young = cli("prune", "--older-than", "30d", "--data", str(data))
    assert (young.returncode, young.stdout) == (0, "0 session(s) that ended more than 30d ago deleted\n"), young.stderr
    dry = cli("prune", "--older-than", "30d", "--dry-run", "--data", str(data), env=LATER)
    assert dry.returncode == 0, dry.stderr
    said = dry.stdout.splitlines()
    assert [line.split(":")[0] for line in said[:3]] == [old, held, old2]
    assert said[1].startswith(f"{held}: kept (held)") and said[0].startswith(f"{old}: would be deleted")
    assert said[-1] == "2 session(s) that ended more than 30d ago would be deleted"
    assert all((data / "sessions" / sid).is_dir() for sid in (old, held, old2))

    receiver = Receiver()
    hooks = {"CAMINGEST_WEBHOOKS": receiver.url, "CAMINGEST_WEBHOOK_SECRET": SECRET}
    pruned = cli("prune", "--older-than", "30d", "--data", str(data), env={**LATER, **hooks})
    assert pruned.returncode == 0 and pruned.stdout.splitlines()[-1] == "2 session(s) that ended more than 30d ago deleted"
    assert [sid for sid in (old, held, old2) if (data / "sessions" / sid).is_dir()] == [held]

    async def delivered() -> None:  # the command wrote its events into the outbox; a server delivers them
        await receiver.start()
        server_factory("--no-analysis", *webhook_args(receiver), data=data)
        await wait_until(lambda: len(receiver.unique()) == 2, "the prune's two deliveries")
        await receiver.stop()

    run(delivered())
    assert sorted((r.event, r.body["reason"], r.body["session"]["id"]) for r in receiver.unique().values()) == sorted(
        [("session.deleted", "prune", old), ("session.deleted", "prune", old2)])  # fmt: skip
    bad = cli("prune", "--older-than", "30 days", "--data", str(data))
    assert (bad.returncode, bad.stderr) == (1, "camingest prune: '30 days' is not an age; write it as a number and a "
                                               "unit: 30d, 12h, 90m, 45s\n")  # fmt: skip


def test_retention_and_prune_on_postgresql(server_factory, tmp_path, postgres):
    """The same on a PostgreSQL index: prune --dry-run names what retention then deletes (the
    held session kept), the webhooks say so."""
    data = tmp_path / "data"
    index = ("--index", postgres.dsn)

    async def scenario() -> None:
        receiver = await Receiver().start()
        server = server_factory("--no-analysis", *index, *webhook_args(receiver), data=data)
        old, held = await recorded_sessions(server.url, 2, extras=False)
        async with aiohttp.ClientSession() as http, http.put(f"{server.url}/api/sessions/{held}/hold") as r:
            assert r.status == 200
        server.stop()
        dry = cli("prune", "--older-than", "30d", "--dry-run", *index, "--data", str(data), env=LATER)
        assert dry.returncode == 0, dry.stderr
        said = dry.stdout.splitlines()
        assert said[0].startswith(f"{old}: would be deleted") and said[1].startswith(f"{held}: kept (held)")
        assert said[-1] == "1 session(s) that ended more than 30d ago would be deleted"

        server = server_factory("--no-analysis", *index, *webhook_args(receiver), data=data, env={
            **LATER, "CAMINGEST_RETENTION_DAYS": "30", "CAMINGEST_RETENTION_CHECK_S": "0.5"})  # fmt: skip
        deleted = functools.partial(deletions, receiver)

        await wait_until(lambda: deleted() == {old: "retention"}, "the old session deleted", seen=deleted)
        passes = (await metrics(server.url))["camingest_retention_passes_total"]
        await wait_until(lambda: more_passes(server.url, passes + 1), "one more retention pass")
        assert (await status_of(server.url, old), await status_of(server.url, held)) == (404, 200)
        assert not (data / "sessions" / old).exists() and (data / "sessions" / held).is_dir()
        assert deleted() == {old: "retention"}
        await receiver.stop()

    run(scenario())
