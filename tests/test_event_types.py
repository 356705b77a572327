"""Wrong types never reach ``internal`` (issue 26, item 2): a property test. Random JSON values
(null, booleans, numbers up to 100 digits, strings of any script, arrays, objects, binary
attachments) in every field of every event, one field at a time, and as whole payloads; every
acked event is answered with a contract code other than ``internal``, every classic one with a
``session_error`` (or its echo) that is not ``internal``; the export route's body likewise; the
server's log holds no traceback. Seeded: CAMINGEST_TEST_SEED=N repeats a run (the seed is
printed); CAMINGEST_TEST_EXAMPLES sets how many events (default 600)."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.client import Client, run, wait_until
from tests.conftest import load_recording

CHUNKS = load_recording("webcam_vp8_kf1s_250ms").chunks
JPEG = (Path(__file__).parent / "fixtures" / "images" / "obama.jpg").read_bytes()
CODES = {"bad_request", "unauthorized", "unknown_session", "gap", "conflict", "too_large", "unsupported",
         "invalid_media", "session_closed", "busy", "storage_full", "unknown_chunk", "unknown_snapshot"}  # fmt: skip
TEXTS = ["", "video/webm", "image/jpeg", "x" * 300, "日本語", "\u202eevil", "a\x00b", "😀" * 5, "../../etc/passwd",
         "20990101-000000-deadbeef", "data:image/jpeg;base64,AAAA", "NaN", "<script>alert(1)</script>"]  # fmt: skip


LAST_IMAGE = ("image must carry its bytes as data, after a video blob opened the session",
              "an image is a snapshot of the video being sent: send a video blob first")


def json_value(rng: random.Random, depth: int = 0) -> Any:
    """Any value a JSON event may carry (binary attachments included), nested up to 4 deep."""
    kind = rng.choice(["null", "bool", "int", "float", "str", "bytes"] + (["list", "dict"] * 2 if depth < 4 else []))
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 2**31, 2**63, -(2**63) - 1, 10**99, -(10**99), rng.randint(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.0, -0.0, 0.5, -1.5, 1e308, -1e308, 5e-324, rng.uniform(-1e6, 1e6)])
    if kind == "str":
        if rng.random() < 0.5:
            return rng.choice(TEXTS)
        return "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
                       for _ in range(rng.randint(0, 40)))  # fmt: skip
    if kind == "bytes":
        return rng.choice([b"", JPEG[:64], CHUNKS[0][:64], rng.randbytes(rng.randint(1, 64))])
    if kind == "list":
        return [json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice([*TEXTS[:6], "data", "seq", "_placeholder"]): json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def attachments(value: Any) -> int:
    if isinstance(value, bytes):
        return 1
    if isinstance(value, list):
        return sum(attachments(v) for v in value)
    if isinstance(value, dict):
        return sum(attachments(v) for v in value.values())
    return 0


def random_value(rng: random.Random, binary: bool = True) -> Any:
    """A random value with at most 3 binary attachments (more close the connection: the
    server's max_event_attachments), or none if not ``binary`` (an HTTP body)."""
    while True:
        value = json_value(rng)
        if attachments(value) <= (3 if binary else 0):
            return value


def test_random_values_in_every_field_never_reach_internal(server_factory):
    seed = int(os.environ.get("CAMINGEST_TEST_SEED", time.time_ns() % 2**32))
    examples = int(os.environ.get("CAMINGEST_TEST_EXAMPLES", "600"))
    print(f"random event fields (CAMINGEST_TEST_SEED={seed}, CAMINGEST_TEST_EXAMPLES={examples})")
    rng = random.Random(seed)
    server = server_factory("--no-analysis")
    seen: dict[str, int] = {}

    async def scenario() -> None:
        async with Client(server.url) as client, Client(server.url) as classic:
            session = await client.start()
            assert (await client.chunk(session, 0, CHUNKS[0]))["ok"]
            auth = {"session_id": session["session_id"], "token": session["token"]}
            valid = {
                "start": {"mime": "video/webm", "meta": {"app": "types"}},
                "resume": {"resume": dict(auth)},
                "chunk": {**auth, "seq": 0, "data": CHUNKS[0], "t_ms": 1.5},
                "snapshot": {**auth, "mime": "image/jpeg", "data": JPEG, "t_ms": 2.5},
                "status": dict(auth),
                "stop": {**auth, "session_id": "20990101-000000-deadbeef"},  # (never stops ours)
            }
            for n in range(examples):
                kind = rng.choice([*valid, "video", "image", "catch-frame", "export"])
                if kind in valid:
                    event = "start" if kind == "resume" else kind
                    payload: Any = dict(valid[kind])
                    if rng.random() < 0.15:
                        payload = random_value(rng)  # the whole payload
                    elif kind == "resume":
                        field = rng.choice(["resume", "resume.session_id", "resume.token"])
                        if field == "resume":
                            payload["resume"] = random_value(rng)
                        else:
                            payload["resume"] = {**auth, field.split(".")[1]: random_value(rng)}
                    else:
                        field = rng.choice([*payload, "extra"])
                        payload[field] = random_value(rng)
                        if kind == "chunk" and field == "seq" and payload["seq"] == 1:
                            payload["seq"] = 7  # (seq 1 would store chunk 0's bytes again: a broken stream)
                    ack = await client.call(event, payload)
                    assert isinstance(ack, dict) and isinstance(ack.get("ok"), bool), (n, event, payload, ack)
                    if ack["ok"]:
                        if event == "start" and "resume" not in payload:  # a new session: stopped again
                            stopped = await client.stop(ack)
                            assert stopped["ok"], stopped
                    else:
                        error = ack["error"]
                        assert error["code"] in CODES and isinstance(error["message"], str), (n, event, payload, ack)
                        seen[error["code"]] = seen.get(error["code"], 0) + 1
                elif kind == "export":
                    body = {rng.choice(["overlay", "format"]): random_value(rng, False)} if rng.random() < 0.7 \
                        else random_value(rng, False)  # fmt: skip
                    async with aiohttp.ClientSession() as http, http.post(
                        f"{server.url}/api/sessions/{session['session_id']}/exports", json=body) as response:  # fmt: skip
                        answer = await response.json()
                    assert response.status in (400, 409) and answer["error"]["code"] in CODES, (n, body, answer)
                else:  # the classic dialects: no acks (their answers are checked below)
                    if kind == "catch-frame" or rng.random() < 0.3:
                        payload = random_value(rng)
                    else:
                        payload = {"data": CHUNKS[0] if kind == "video" else JPEG, "timeMillis": 12.5}
                        payload[rng.choice(["data", "timeMillis", "extra"])] = random_value(rng)
                    await classic.sio.emit(kind, payload)
            # each classic `video` and `image` of a connection is handled in arrival order: the
            # answer to one sent last comes after every one before it was handled
            await classic.sio.emit("image", {"data": "last", "timeMillis": 1})
            await wait_until(lambda: classic.events["session_error"] and classic.events["session_error"][-1]["message"]
                             in LAST_IMAGE, "the answer to the last image", 60)  # fmt: skip
            errors = list(classic.events["session_error"])
            assert errors and all(e["code"] in CODES for e in errors), [e for e in errors if e["code"] not in CODES]
            # the session is as it was: one chunk
            assert (await client.call("status", auth)) == {"ok": True, "state": "recording", "next_seq": 1, "durable_seq": 0}

    run(scenario())
    print("answers:", dict(sorted(seen.items())))
    assert server.stop() == 0  # every event in hand finished: its log lines are written
    log = server.log.read_text()
    assert "Traceback" not in log and "internal error" not in log, log[max(0, log.find("Traceback") - 300) :][:4000]
