"""One bad number breaks nothing (issue 26, item 1, and item 2's deep nesting): NaN, Infinity and
1e400 are not JSON, yet Python's json reads and writes them. Sent in every numeric and free-form
field of every event and route, each is answered with the contract's error naming the field;
the listing stays JSON a browser parses (also with a NaN stored before this rule), the sessions
page lists the sessions; events nested 100,000 deep, or that are not events, are answered too;
and the server logs no traceback for any of it."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from tests.client import Client, http_get, run, wait_until
from tests.conftest import CHROMIUM, ServerProcess, load_recording
from tests.pages import in_thread
from tests.pages import wait_until as page_wait_until

CHUNKS = load_recording("webcam_vp8_kf1s_250ms").chunks
JPEG = (Path(__file__).parent / "fixtures" / "images" / "obama.jpg").read_bytes()
# what JSON's non-numbers are answered with (strict_json.py), after the field's name
PROBLEMS = {
    "NaN": "is NaN, which JSON does not have: send a finite number",
    "Infinity": "is Infinity, which JSON does not have: send a finite number",
    "-Infinity": "is -Infinity, which JSON does not have: send a finite number",
    "1e400": "is 1e400, beyond the largest number (it would be infinity)",
    "-1e400": "is -1e400, beyond the largest number (it would be infinity)",
}


def raw(text: str) -> str:
    """A placeholder that the test client's JSON writes as ``text`` itself (not a string)."""
    return f"@@raw[{text}]@@"


class RawJSON:
    """JSON as the test client writes it: standard, except placeholders (``raw``) become the
    literal text they hold: ``NaN``, ``1e400``, 100,000 ``[``."""

    _PLACEHOLDER = re.compile(r'"@@raw\[(.*?)\]@@"', re.S)

    @classmethod
    def dumps(cls, obj: Any, **options: Any) -> str:
        return cls._PLACEHOLDER.sub(lambda m: m.group(1), json.dumps(obj, **options))

    @staticmethod
    def loads(text: str, **options: Any) -> Any:
        options.pop("parse_int", None)
        return json.loads(text, **options)


class RawPacket(socketio.packet.Packet):
    json = RawJSON


def strict_loads(body: bytes | str) -> Any:
    """What a browser's JSON.parse takes: no NaN, no Infinity."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a JSON answer")

    return json.loads(body, parse_constant=refuse)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("strict") / "data"
    server = ServerProcess(data, "--no-analysis").start()
    yield server
    server.stop()


def no_traceback(server: ServerProcess) -> None:
    log = server.log.read_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 500 :][:3000]


async def raw_client(url: str) -> Client:
    client = Client(url)
    client.sio.packet_class = RawPacket
    await client.__aenter__()
    return client


def cases(session: dict[str, Any], value: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(event, field named in the answer, payload) with ``value`` (a JSON non-number) in each
    numeric and free-form field of each acked event."""
    auth = {"session_id": session["session_id"], "token": session["token"]}
    v = raw(value)
    return [
        ("start", "mime", {"mime": v}),
        ("start", "meta", {"mime": "video/webm", "meta": v}),
        ("start", "meta.x", {"mime": "video/webm", "meta": {"x": v}}),
        ("start", "meta.label.deep[2]", {"mime": "video/webm", "meta": {"label": {"deep": [1, 2, v]}}}),
        ("start", "resume", {"resume": v}),
        ("start", "resume.session_id", {"resume": {"session_id": v, "token": session["token"]}}),
        ("start", "resume.token", {"resume": {"session_id": session["session_id"], "token": v}}),
        ("chunk", "seq", {**auth, "seq": v, "data": CHUNKS[1]}),
        ("chunk", "t_ms", {**auth, "seq": 1, "t_ms": v, "data": CHUNKS[1]}),
        ("chunk", "session_id", {**auth, "session_id": v, "seq": 1, "data": CHUNKS[1]}),
        ("chunk", "token", {**auth, "token": v, "seq": 1, "data": CHUNKS[1]}),
        ("chunk", "data", {**auth, "seq": 1, "data": v}),
        ("snapshot", "t_ms", {**auth, "mime": "image/jpeg", "t_ms": v, "data": JPEG}),
        ("snapshot", "mime", {**auth, "mime": v, "data": JPEG}),
        ("snapshot", "token", {**auth, "token": v, "mime": "image/jpeg", "data": JPEG}),
        ("status", "session_id", {**auth, "session_id": v}),
        ("stop", "token", {**auth, "token": v}),
        ("stop", "the payload", v),  # type: ignore[list-item]
    ]


def test_non_numbers_in_every_field_of_every_event_are_refused_by_name(server):
    async def scenario() -> None:
        client = await raw_client(server.url)
        try:
            session = await client.start()
            assert (await client.chunk(session, 0, CHUNKS[0]))["ok"]
            for value, problem in PROBLEMS.items():
                for event, field, payload in cases(session, value):
                    ack = await client.call(event, payload)
                    assert ack == {"ok": False, "error": {"code": "bad_request", "message": f"{field} {problem}"}}, (
                        event, field, value)  # fmt: skip
            # the classic dialects have no acks: a session_error says it
            classic = (("video", {"data": CHUNKS[0], "timeMillis": raw("NaN")}, "timeMillis", "NaN"),
                       ("image", {"data": JPEG, "timeMillis": raw("1e400")}, "timeMillis", "1e400"),
                       ("image", raw("Infinity"), "the payload", "Infinity"),
                       ("catch-frame", {"x": [raw("-Infinity")]}, "x[0]", "-Infinity"))  # fmt: skip
            for event, payload, _, _ in classic:
                await client.sio.emit(event, payload)
            errors = await wait_until(lambda: len(client.events["session_error"]) >= 4 and client.events["session_error"],
                                      "4 session_error events", 30)  # fmt: skip
            assert [e["message"] for e in errors] == [f"{field} {PROBLEMS[value]}" for _, _, field, value in classic]
            assert {(e["code"], e["session_id"]) for e in errors} == {("bad_request", None)}
            # nothing of it disturbed the session, and the listing is JSON a browser reads
            assert (await client.chunk(session, 1, CHUNKS[1]))["next_seq"] == 2
        finally:
            await client.close()
        status, body, kind = await http_get(f"{server.url}/api/sessions")
        assert status == 200 and kind.startswith("application/json")
        listed = strict_loads(body)["sessions"]
        assert [s["id"] for s in listed] == [session["session_id"]]

    run(scenario())
    no_traceback(server)


async def post(url: str, body: bytes | str, content_type: str = "application/json") -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers={"Content-Type": content_type}) as r:
        return r.status, strict_loads(await r.read())


def test_non_numbers_in_every_route_are_refused_by_name(server):
    async def scenario() -> None:
        async with Client(server.url) as client:
            session = await client.start()
            await client.send_all(session, CHUNKS[:3])
            await client.stop(session)
        base = f"{server.url}/api/sessions/{session['session_id']}"
        for value, problem in PROBLEMS.items():
            for body, field in ((f'{{"overlay": {value}}}', "overlay"), (f'{{"overlay": "none", "format": {value}}}', "format"),
                                (value, "the body"), (f'{{"overlay": "none", "extra": [{value}]}}', "extra[0]")):  # fmt: skip
                assert await post(base + "/exports", body) == (400, {"error": {"code": "bad_request", "message":
                    f"{field} {problem}"}}), body  # fmt: skip
            # numbers in addresses: the route names the parameter
            for url, message in ((f"{server.url}/api/sessions?limit={value}", f"limit={value!r}: allowed 1-500 (max_sessions_page)"),
                                 (f"{base}/chunks/{value}", f"seq must be a non-negative integer, got {value!r}"),
                                 (f"{server.url}/api/sessions?since={value}", f"since={value!r} is not a date (2026-12-01) "
                                  "or a time (2026-12-01T14:30:00Z)")):  # fmt: skip
                status, body, _ = await http_get(url)
                assert (status, strict_loads(body)) == (400, {"error": {"code": "bad_request", "message": message}}), url
        # wrong types and deep nesting in a body: named, never internal
        for body, message in (('{"overlay": ["lips"]}', "overlay must be a string, got an array"),
                              ('{"format": {"a": 1}}', "format must be a string, got an object"),
                              ('["none"]', "the body must be an object, got an array"),
                              ('{"overlay": "none\\ud800"}', "overlay holds a lone surrogate (not a character: no UTF-8 encodes it)"),
                              ("[" * 100_000, "the body nests arrays and objects deeper than 64 levels (max_json_depth)"),
                              ("{" * 100_000, "the body nests arrays and objects deeper than 64 levels (max_json_depth)"),
                              (b"\xff\xfe{}", "the body is not UTF-8 (byte 0)"),
                              ("{'overlay': 'none'}", 'the body is not JSON; send one like {"overlay": "landmarks", "format": "mp4"}')):  # fmt: skip
            assert await post(base + "/exports", body, "application/json; charset=nonsense") == (
                400, {"error": {"code": "bad_request", "message": message}}), body
        status, answer = await post(base + "/exports", '{"overlay": "none", "format": "webm"}')
        assert status == 202 and answer["overlay"] == "none"

    run(scenario())
    no_traceback(server)


class RawSocket:
    """A Socket.IO connection spoken by hand (engine.io over a websocket), for packets no client
    library sends: ``call`` sends an event packet as text and returns its ack."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ids = iter(range(1, 1_000_000))

    async def __aenter__(self) -> RawSocket:
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.url)
        assert (await self.ws.receive_str()).startswith("0{")
        await self.ws.send_str("40")
        assert (await self.ws.receive_str()).startswith("40{")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        await self.http.close()

    async def receive(self) -> str:
        while True:
            message = await asyncio.wait_for(self.ws.receive(), 30)
            if message.type != aiohttp.WSMsgType.TEXT:
                return ""  # closed
            if message.data == "2":  # engine.io ping
                await self.ws.send_str("3")
                continue
            return message.data

    async def call(self, text: str, attachments: tuple[bytes, ...] = ()) -> Any:
        """``text``: the packet after its type and id (``["start",{...}]``); the ack's data."""
        ack_id = next(self.ids)
        kind = f"5{len(attachments)}-" if attachments else "2"
        await self.ws.send_str(f"4{kind}{ack_id}{text}")
        for attachment in attachments:
            await self.ws.send_bytes(attachment)
        answer = await self.receive()
        assert answer.startswith(f"43{ack_id}["), answer
        return json.loads(answer[len(f"43{ack_id}") :])


def test_events_that_are_not_events_or_nest_too_deep_are_answered(server):
    deep = "[" * 100_000 + "]" * 100_000
    error = {"ok": False, "error": {"code": "bad_request"}}

    async def scenario() -> None:
        async with RawSocket(server.url) as sock:
            for text, message in (
                (f'["start",{{"mime":"video/webm","meta":{{"x":{deep}}}}}]',
                 "the event's JSON nests arrays and objects deeper than 64 levels (max_json_depth)"),
                ('["start",{"mime":"video/webm","meta":{"x":' + "{" * 100_000 + "}}",
                 "the event's JSON nests arrays and objects deeper than 64 levels (max_json_depth)"),
                ('{"start":1}', "an event is a JSON array: its name (a string), then its payload"),
                ("[]", "an event is a JSON array: its name (a string), then its payload"),
                ("[5,{}]", "an event is a JSON array: its name (a string), then its payload"),
                ('["disconnect","x"]', "'disconnect' is not an event a client may send"),
                ('["connect",{}]', "'connect' is not an event a client may send"),
                ('["start",{"mime":"video/webm"},{"extra":1}]', "'start' takes one payload, got 2"),
                ('["start",{"mime":"video/webm"', "the event is not JSON: Expecting ',' delimiter: line 1 column 30 (char 29)"),
                ('["start",{"mime":"video/\\udc00"}]', "mime holds a lone surrogate (not a character: no UTF-8 encodes it)"),
                ('["start",{"mime":"video/webm","meta":{"n":' + "9" * 200 + "}}]",
                 "meta.n is an integer of 200 characters; at most 100 are taken"),
            ):  # fmt: skip
                ack = await sock.call(text)
                assert ack == [{**error, "error": {**error["error"], "message": message}}], text[:80]
            # a binary event whose JSON is refused: its attachment is taken and dropped, the ack says why
            placeholder = '{"_placeholder":true,"num":0}'
            ack = await sock.call(f'["chunk",{{"session_id":"x","token":"y","seq":0,"data":{placeholder},"t_ms":NaN}}]',
                                  (CHUNKS[0],))  # fmt: skip
            assert ack == [{**error, "error": {**error["error"], "message": f"t_ms {PROBLEMS['NaN']}"}}]
            # and the connection still works
            ack = await sock.call('["start",{"mime":"video/webm"}]')
            assert ack[0]["ok"] is True

    run(scenario())
    no_traceback(server)


def test_a_nan_stored_before_the_rule_keeps_the_listing_readable(server_factory, tmp_path):
    """A data folder whose index holds a NaN meta (written before strict JSON): listed with null."""
    data = tmp_path / "data"
    server = server_factory("--no-analysis", data=data)

    async def start() -> str:
        async with Client(server.url) as client:
            return (await client.start(meta={"label": "old"}))["session_id"]

    session_id = run(start())
    server.stop()
    with sqlite3.connect(data / "index.sqlite3") as db:  # what json.dumps wrote before allow_nan=False
        db.execute("UPDATE sessions SET meta=? WHERE id=?", ('{"label": "old", "x": NaN, "y": -Infinity, "z": 1e400}',
                                                           session_id))  # fmt: skip
    server = server_factory("--no-analysis", data=data)
    for url in (f"{server.url}/api/sessions", f"{server.url}/api/sessions/{session_id}"):
        status, body, _ = run(http_get(url))
        answer = strict_loads(body)
        summary = answer["sessions"][0] if "sessions" in answer else answer
        assert status == 200 and summary["meta"] == {"label": "old", "x": None, "y": None, "z": None}


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_the_sessions_page_lists_the_sessions_after_a_nan_attempt(server, browser):
    async def attempt() -> list[str]:
        client = await raw_client(server.url)
        try:
            ack = await client.call("start", {"mime": "video/webm", "meta": {"x": raw("NaN"), "y": raw("Infinity")}})
            assert ack["error"]["code"] == "bad_request"
            for n in range(2):
                await client.start(meta={"label": f"after {n}"})
        finally:
            await client.close()
        _, body, _ = await http_get(f"{server.url}/api/sessions")
        return [s["id"] for s in strict_loads(body)["sessions"]]

    listed = in_thread(attempt())
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/sessions")
    page_wait_until(page, f"() => window.camingestSessions.listed.join() === {json.dumps(','.join(listed))}")
    assert errors == []
