"""Smoke tests of the real-engine fixtures (tests/engines.py): each engine really works, keeps its
data over stop()/start(), and leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import ClientSession, WSMsgType, web

from tests.conftest import ROOT
from tests.engines import (
    EngineError,
    Nginx,
    PostgresDatabase,
    PostgresServer,
    RedisServer,
    S3Bucket,
    SeaweedFS,
    free_port,
    require_binary,
    wait_port,
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


# --------------------------------------------------------------------------------------------- PostgreSQL


@pytest.mark.parametrize("run", [1, 2])
def test_postgres_database_is_fresh_per_test(postgres: PostgresDatabase, run: int) -> None:
    import psycopg

    assert postgres.dsn.startswith(f"postgresql://camingest@127.0.0.1:{postgres.port}/test_")
    with psycopg.connect(postgres.dsn) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, body bytea NOT NULL)")  # fails if a test left it
        conn.execute("INSERT INTO t VALUES (%s, %s)", (run, b"\x00\xffbytes"))
        conn.commit()
        assert conn.execute("SELECT id, body FROM t").fetchall() == [(run, b"\x00\xffbytes")]
        settings = dict(
            conn.execute("SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'listen_addresses')")
        )
    assert settings == {"fsync": "on", "listen_addresses": "127.0.0.1"}
    with psycopg.connect(postgres.server.dsn) as conn:  # the "camingest" database exists too
        assert conn.execute("SELECT current_database()").fetchone() == ("camingest",)


def test_postgres_stop_start_keeps_data(postgres: PostgresDatabase) -> None:
    import psycopg

    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v text)")
        conn.execute("INSERT INTO t VALUES ('kept')")
    held = psycopg.connect(postgres.dsn, autocommit=True)
    postgres.stop()
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")  # the server ended the session
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres.dsn, connect_timeout=2)
    postgres.start()
    with psycopg.connect(postgres.dsn) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [("kept",)]
    postgres.restart()
    postgres.kill()  # as if the machine died: crash recovery at the next start
    postgres.start()
    with psycopg.connect(postgres.dsn) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [("kept",)]
    held.close()


def test_postgres_private_server_leaves_no_process(postgres_factory: Callable[..., PostgresServer]) -> None:
    import psycopg

    server = postgres_factory()
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        backends = server.processes()
        assert len(backends) > 3  # postmaster, its helpers and this connection's backend
    server.cleanup()
    assert not any(alive(p) for p in backends)
    assert not server.base.exists()


# --------------------------------------------------------------------------------------------- Redis


def test_redis_set_get_pubsub_stop_start(redis: RedisServer) -> None:
    import redis as redis_py

    assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    client = redis_py.Redis.from_url(redis.url, socket_timeout=2)
    client.set("k", b"v")
    assert client.get("k") == b"v"
    pubsub = client.pubsub()
    pubsub.subscribe("chan")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"  # type: ignore[index]
    assert client.publish("chan", b"hello") == 1
    message = pubsub.get_message(timeout=2)
    assert message is not None and message["data"] == b"hello"
    pubsub.close()

    pid = redis.pid
    redis.stop()
    assert not alive(pid)
    with pytest.raises(redis_py.ConnectionError):
        client.get("k")
    redis.start()
    assert client.ping()  # same URL; no persistence, so the key is gone
    assert client.get("k") is None
    client.close()


def test_engines_die_with_a_killed_test_process() -> None:
    """An engine started by a process that is then SIGKILLed (a pytest killed by CI) exits too."""
    code = (
        "from tests.engines import RedisServer\n"
        "r = RedisServer().start()\n"
        "print(r.pid, r.base, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pid_text, base = proc.stdout.readline().split()
    pid = int(pid_text)
    assert alive(pid)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    subprocess.run(["rm", "-rf", base], check=True)


def test_missing_binary_fails_naming_its_package() -> None:
    with pytest.raises(pytest.fail.Exception, match="install Debian's frobnicator"):
        require_binary("no-such-engine-binary", "Debian's frobnicator")


def test_wait_port_fails_loudly_with_the_log_tail() -> None:
    server = RedisServer()  # started with an option it refuses: it exits at once
    server.command = lambda: [server.binary, "--port", str(server.port), "--no-such-option", "x"]  # type: ignore[method-assign]
    try:
        with pytest.raises(EngineError, match=r"(?s)redis exited.*no-such-option"):
            server.start()
    finally:
        server.cleanup()
    with pytest.raises(EngineError, match="timed out"):
        wait_port("127.0.0.1", free_port(), timeout=0.3)


# --------------------------------------------------------------------------------------------- SeaweedFS


def test_s3_put_get_list_range_large(s3: S3Bucket) -> None:
    client = s3.client()
    assert s3.endpoint.startswith("http://127.0.0.1:")
    assert os.environ["AWS_ACCESS_KEY_ID"] == s3.env["AWS_ACCESS_KEY_ID"]
    client.put_object(Bucket=s3.bucket, Key="sessions/a/segments/00000001-00000020", Body=b"seg1")
    client.put_object(Bucket=s3.bucket, Key="sessions/a/recording.webm", Body=b"rec")
    client.put_object(Bucket=s3.bucket, Key="sessions/b/recording.webm", Body=b"other")
    big = os.urandom(5 * 1024 * 1024)
    client.put_object(Bucket=s3.bucket, Key="sessions/a/big", Body=big)
    assert client.get_object(Bucket=s3.bucket, Key="sessions/a/big")["Body"].read() == big
    ranged = client.get_object(Bucket=s3.bucket, Key="sessions/a/big", Range="bytes=1000-1999")
    assert ranged["ContentRange"] == f"bytes 1000-1999/{len(big)}"
    assert ranged["Body"].read() == big[1000:2000]
    listed = client.list_objects_v2(Bucket=s3.bucket, Prefix="sessions/a/")
    assert sorted(o["Key"] for o in listed["Contents"]) == [
        "sessions/a/big", "sessions/a/recording.webm", "sessions/a/segments/00000001-00000020",
    ]  # fmt: skip
    assert s3.keys("sessions/b/") == ["sessions/b/recording.webm"]


def test_s3_stop_start_keeps_objects_and_fails_fast_while_stopped(s3: S3Bucket) -> None:
    import botocore.exceptions

    client = s3.client()
    body = os.urandom(100_000)
    client.put_object(Bucket=s3.bucket, Key="kept", Body=body)
    s3.stop()
    began = time.monotonic()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        client.put_object(Bucket=s3.bucket, Key="while-stopped", Body=b"x")
    assert time.monotonic() - began < 5  # refused, retried once: no hang
    s3.start()
    assert client.get_object(Bucket=s3.bucket, Key="kept")["Body"].read() == body
    client.put_object(Bucket=s3.bucket, Key="after", Body=b"y")
    assert s3.keys() == ["after", "kept"]


def test_s3_private_server(seaweedfs_factory: Callable[[], SeaweedFS]) -> None:
    server = seaweedfs_factory()
    server.create_bucket("private")
    server.client().put_object(Bucket="private", Key="k", Body=b"v")
    pid = server.pid
    server.cleanup()
    assert not alive(pid)
    assert not any(p.exists() for p in server._stray_sockets())


# --------------------------------------------------------------------------------------------- nginx


class Upstreams:
    """aiohttp apps on N loopback ports (in a thread with its own loop): GET / answers the port and
    the headers it got; /ws is a WebSocket that answers the port, then echoes."""

    def __init__(self, count: int) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        for port in self.ports:
            app = web.Application()
            app.router.add_get("/", self._page(port))
            app.router.add_get("/ws", self._ws(port))
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self.runners.append(runner)

    @staticmethod
    def _page(port: int) -> Callable[[web.Request], Any]:
        async def page(request: web.Request) -> web.Response:
            return web.json_response({"port": port, "headers": dict(request.headers)})

        return page

    @staticmethod
    def _ws(port: int) -> Callable[[web.Request], Any]:
        async def ws(request: web.Request) -> web.WebSocketResponse:
            socket = web.WebSocketResponse()
            await socket.prepare(request)
            await socket.send_str(str(port))
            async for message in socket:
                if message.type == WSMsgType.TEXT:
                    await socket.send_str(message.data)
            return socket

        return ws

    def close(self) -> None:
        async def stop() -> None:
            for runner in self.runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    apps = Upstreams(2)
    try:
        yield apps
    finally:
        apps.close()


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


async def websocket_ports(url: str, count: int) -> list[int]:
    """Open ``count`` WebSockets at once; the upstream port each landed on (after an echo)."""
    async with ClientSession() as session:
        sockets = [await session.ws_connect(url.replace("http", "ws", 1) + "/ws") for _ in range(count)]
        ports = []
        for socket in sockets:
            ports.append(int((await socket.receive(timeout=5)).data))
            await socket.send_str("ping")
            assert (await socket.receive(timeout=5)).data == "ping"
        for socket in sockets:
            await socket.close()
        return ports


def test_nginx_round_robin_http_and_websocket(nginx: Callable[[list[int]], Nginx], upstreams: Upstreams) -> None:
    lb = nginx(upstreams.ports)
    answers = [get_json(lb.url + "/") for _ in range(4)]
    ports = [a["port"] for a in answers]
    assert sorted(ports) == sorted(upstreams.ports * 2) and ports[0] != ports[1]  # round robin
    headers = answers[0]["headers"]
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["Host"] == f"127.0.0.1:{lb.port}"
    assert sorted(asyncio.run(websocket_ports(lb.url, 2))) == sorted(upstreams.ports)

    lb.reload(upstreams.ports[:1])  # one node left
    assert {get_json(lb.url + "/")["port"] for _ in range(3)} == {upstreams.ports[0]}
    assert asyncio.run(websocket_ports(lb.url, 2)) == [upstreams.ports[0]] * 2

    processes = lb.processes()
    assert len(processes) == 2  # master and its one worker
    lb.stop()
    assert not any(alive(p) for p in processes)


def test_nginx_skips_a_dead_upstream(nginx: Callable[[list[int]], Nginx], upstreams: Upstreams) -> None:
    dead = free_port()
    lb = nginx([dead, *upstreams.ports])
    assert all(get_json(lb.url + "/")["port"] in upstreams.ports for _ in range(4))
    lb.reload([dead])
    with pytest.raises(urllib.error.HTTPError) as refused:
        get_json(lb.url + "/")
    assert refused.value.code == 502
    lb.stop(timeout=5)
    assert lb.proc is not None and lb.proc.returncode in (0, -signal.SIGTERM)


# --------------------------------------------------------------------------------------------- together


def test_socketio_over_redis_behind_nginx(nginx: Callable[[list[int]], Nginx], redis: RedisServer) -> None:
    """Two python-socketio nodes on one Redis (AsyncRedisManager), WebSocket only, behind nginx
    round robin: an emit to a sid from the node the client is not on reaches it."""
    import socketio

    async def scenario() -> None:
        ports, nodes, runners, where = [free_port(), free_port()], [], [], {}
        for index, port in enumerate(ports):
            sio = socketio.AsyncServer(
                async_mode="aiohttp", client_manager=socketio.AsyncRedisManager(redis.url), transports=["websocket"]
            )

            def connect(sid: str, environ: dict, auth: Any = None, index: int = index) -> None:
                where[sid] = index

            sio.on("connect", connect)
            app = web.Application()
            sio.attach(app)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            nodes.append(sio)
            runners.append(runner)
        lb = nginx(ports)
        got: asyncio.Queue[Any] = asyncio.Queue()
        clients = []
        try:
            for _ in range(2):
                client = socketio.AsyncClient(reconnection=False)
                client.on("hello", got.put)
                await client.connect(lb.url, transports=["websocket"], wait_timeout=5)
                clients.append(client)
            assert sorted(where[c.get_sid()] for c in clients) == [0, 1]  # one on each node
            await asyncio.sleep(0.3)  # each node's Redis listener subscribed
            for client in clients:
                other = nodes[1 - where[client.get_sid()]]
                await other.emit("hello", client.get_sid(), to=client.get_sid())
                assert await asyncio.wait_for(got.get(), 5) == client.get_sid()
        finally:
            for client in clients:
                await client.disconnect()
            for runner in runners:
                await runner.cleanup()

    asyncio.run(scenario())
