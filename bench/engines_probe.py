"""Measurements behind ENGINES.md, on the real engines of tests/engines.py.

    python bench/engines_probe.py [socketio|postgres|s3|jwt|all]

Each part starts the engines it needs on free loopback ports and stops them; figures go to stdout.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.engines import Nginx, PostgresServer, RedisServer, SeaweedFS, free_port


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, seconds: list[float]) -> None:
    ms = [s * 1000 for s in seconds]
    print(f"{name}: n={len(ms)} p50={pct(ms, 0.5):.2f} ms p99={pct(ms, 0.99):.2f} ms max={max(ms):.2f} ms")


# --------------------------------------------------------------------------------------------- Socket.IO


async def socketio_probe() -> None:
    import socketio
    from aiohttp import web
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    redis = RedisServer().start()
    nodes: dict[str, Any] = {}
    runners = []
    where: dict[str, str] = {}
    ports = [free_port(), free_port()]
    for name, port in zip("AB", ports, strict=True):
        manager = socketio.AsyncRedisManager(redis.url)
        sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager, transports=["websocket"])

        def on_connect(sid: str, environ: dict, auth: Any = None, name: str = name) -> None:
            where[sid] = name

        sio.on("connect", on_connect)
        app = web.Application()
        sio.attach(app)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        nodes[name] = sio
    lb = Nginx(ports).start()
    print(f"redis {redis.start_seconds:.3f} s, nginx {lb.start_seconds:.3f} s to start")
    await asyncio.sleep(0.5)  # both listeners subscribed

    received: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
    clients = []
    for _ in range(2):
        client = socketio.AsyncClient(reconnection=True)

        async def on_ping(data: Any, q: asyncio.Queue = received) -> None:
            await q.put((time.perf_counter(), data))

        client.on("ping", on_ping)
        await client.connect(lb.url, transports=["websocket"])
        clients.append(client)
    placed = {c.get_sid(): where[c.get_sid()] for c in clients}
    print("clients through nginx landed on", sorted(placed.values()), "(round robin)")
    client = clients[0]
    sid = client.get_sid()
    local, remote = nodes[placed[sid]], nodes["B" if placed[sid] == "A" else "A"]

    async def hop(server: Any, n: int) -> list[float]:
        out = []
        for i in range(n):
            t = time.perf_counter()
            await server.emit("ping", {"i": i, "pad": "x" * 1000}, to=sid)
            got, _ = await asyncio.wait_for(received.get(), 5)
            out.append(got - t)
        return out

    summary("emit to=sid from the node the client is on (1 KB)", await hop(local, 300))
    summary("emit to=sid from the other node, through Redis (1 KB)", await hop(remote, 300))
    t = time.perf_counter()
    for i in range(1000):
        await remote.emit("ping", {"i": i}, to=sid)
    print(f"1000 emits from the other node awaited in {time.perf_counter() - t:.3f} s")
    for _ in range(1000):
        await asyncio.wait_for(received.get(), 5)

    # write-only manager (an external process): no listener, emits reach the client too
    writer = socketio.AsyncRedisManager(redis.url, write_only=True)
    await writer.emit("ping", {"from": "write_only"}, to=sid, namespace="/")
    _, data = await asyncio.wait_for(received.get(), 5)
    print("write_only AsyncRedisManager emit delivered:", data)

    # Redis down: what does emit do?
    redis.stop()
    for label, server in (("local", local), ("remote", remote)):
        t = time.perf_counter()
        try:
            await server.emit("ping", {"down": label}, to=sid)
            outcome = "returned (no exception)"
        except Exception as e:
            outcome = f"raised {e!r}"
        print(f"Redis stopped: emit from the {label} node {outcome} after {time.perf_counter() - t:.2f} s")
    got_local = []
    with_timeout = 1.0
    try:
        while True:
            got_local.append((await asyncio.wait_for(received.get(), with_timeout))[1])
    except TimeoutError:
        pass
    print("  delivered while Redis was down:", got_local)

    # the same with redis_options that fail fast
    fast = socketio.AsyncRedisManager(
        redis.url, write_only=True,
        redis_options={"socket_connect_timeout": 0.5, "socket_timeout": 0.5, "retry": Retry(NoBackoff(), 0)},
    )  # fmt: skip
    t = time.perf_counter()
    await fast.emit("ping", {"down": "fast"}, to=sid, namespace="/")
    print(
        f"  write_only manager with socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0): {time.perf_counter() - t:.3f} s"
    )

    down_for = 5.0
    await asyncio.sleep(down_for)
    redis.start()
    back = time.perf_counter()
    # when do cross-node emits arrive again?
    while True:
        await remote.emit("ping", {"probe": True}, to=sid)
        try:
            await asyncio.wait_for(received.get(), 0.2)
            break
        except TimeoutError:
            if time.perf_counter() - back > 90:
                print("  cross-node emits never resumed")
                break
    print(
        f"Redis down {down_for:.0f} s then started: cross-node emits delivered again {time.perf_counter() - back:.2f} s later"
    )
    print(f"  client still connected: {client.connected}")

    # a longer outage: the listener's own back-off (1, 2, 4 ... 60 s)
    redis.stop()
    await asyncio.sleep(20)
    redis.start()
    back = time.perf_counter()
    while True:
        await remote.emit("ping", {"probe": True}, to=sid)
        try:
            await asyncio.wait_for(received.get(), 0.2)
            break
        except TimeoutError:
            if time.perf_counter() - back > 90:
                print("  cross-node emits never resumed")
                break
    print(f"Redis down 20 s then started: cross-node emits delivered again {time.perf_counter() - back:.2f} s later")

    for c in clients:
        await c.disconnect()
    for runner in runners:
        await runner.cleanup()
    lb.cleanup()
    redis.cleanup()


# --------------------------------------------------------------------------------------------- PostgreSQL


def postgres_probe() -> None:
    import psycopg
    from psycopg import errors
    from psycopg_pool import ConnectionPool

    began = time.monotonic()
    server = PostgresServer()
    server.start()
    print(f"PostgreSQL: initdb + start {time.monotonic() - began:.2f} s (start alone {server.start_seconds:.2f} s)")
    t = time.monotonic()
    dsn = server.create_database("probe")
    print(f"CREATE DATABASE {1000 * (time.monotonic() - t):.0f} ms")
    with psycopg.connect(dsn, autocommit=True) as conn:
        print("synchronous_commit =", conn.execute("SHOW synchronous_commit").fetchone()[0],
              "fsync =", conn.execute("SHOW fsync").fetchone()[0])  # fmt: skip
        conn.execute("CREATE TABLE chunks (session text, seq int, size int, sha bytea, PRIMARY KEY (session, seq))")
        conn.execute(
            "CREATE TABLE leases (session text PRIMARY KEY, node text NOT NULL, expires_at timestamptz NOT NULL)"
        )
        one = []
        for i in range(1000):
            t = time.perf_counter()
            conn.execute("INSERT INTO chunks VALUES (%s, %s, %s, %s)", ("s1", i, 1000, os.urandom(32)))
            one.append(time.perf_counter() - t)
        summary("one-row INSERT, autocommit (a commit each)", one)
        batch = []
        for j in range(100):
            t = time.perf_counter()
            with conn.transaction():
                for i in range(50):
                    conn.execute("INSERT INTO chunks VALUES (%s, %s, %s, %s)", (f"b{j}", i, 1000, b"\x00" * 32))
            batch.append(time.perf_counter() - t)
        summary("50-row transaction (50 execute + commit)", batch)
        many = []
        with conn.cursor() as cur:
            for j in range(100):
                t = time.perf_counter()
                with conn.transaction():
                    cur.executemany("INSERT INTO chunks VALUES (%s, %s, %s, %s)",
                                    [(f"m{j}", i, 1000, b"\x00" * 32) for i in range(50)])  # fmt: skip
                many.append(time.perf_counter() - t)
        summary("50-row transaction (executemany, pipelined)", many)
        conn.execute("SET synchronous_commit = off")
        off = []
        for i in range(1000):
            t = time.perf_counter()
            conn.execute("INSERT INTO chunks VALUES (%s, %s, %s, %s)", ("s2", i, 1000, b""))
            off.append(time.perf_counter() - t)
        summary("one-row INSERT with synchronous_commit=off (for contrast)", off)
        conn.execute("SET synchronous_commit = on")

        # bytea round trip
        blob = os.urandom(100_000)
        conn.execute("INSERT INTO chunks VALUES ('blob', 0, 0, %s)", (blob,))
        assert conn.execute("SELECT sha FROM chunks WHERE session = 'blob'").fetchone()[0] == blob
        print("bytea: bytes in, bytes out (100 KB round trip equal)")

        # ON CONFLICT, leases
        status = conn.execute("INSERT INTO chunks VALUES ('s1', 0, 1, '') ON CONFLICT (session, seq) DO NOTHING")
        print("INSERT ... ON CONFLICT DO NOTHING on an existing key: rowcount", status.rowcount)
        take = """INSERT INTO leases AS l VALUES (%(s)s, %(n)s, now() + interval '10 seconds')
                  ON CONFLICT (session) DO UPDATE SET node = excluded.node, expires_at = excluded.expires_at
                  WHERE l.node = excluded.node OR l.expires_at < now()
                  RETURNING node"""
        print("lease taken by A:", conn.execute(take, {"s": "x", "n": "A"}).fetchall(),
              "then by B while A's is live:", conn.execute(take, {"s": "x", "n": "B"}).fetchall())  # fmt: skip
        renew = conn.execute(
            "UPDATE leases SET expires_at = now() + interval '10 seconds' WHERE session = 'x' AND node = %s", ("B",)
        )
        print("renew by B (not the owner): rowcount", renew.rowcount)

    # NOTIFY latency between two connections
    listener = psycopg.connect(dsn, autocommit=True)
    listener.execute("LISTEN gallery")
    sender = psycopg.connect(dsn, autocommit=True)
    lat = []
    for i in range(200):
        t = time.perf_counter()
        sender.execute("SELECT pg_notify('gallery', %s)", (str(i),))
        note = next(listener.notifies(timeout=2, stop_after=1))
        lat.append(time.perf_counter() - t)
        assert note.payload == str(i)
    summary("NOTIFY -> the listener's notifies()", lat)

    # a restart: what does a held connection see?
    held = psycopg.connect(dsn, autocommit=True)
    server.restart()
    try:
        held.execute("SELECT 1")
    except psycopg.Error as e:
        print(f"held connection after a fast restart: {type(e).__module__}.{type(e).__name__} "
              f"sqlstate={e.sqlstate} isinstance OperationalError={isinstance(e, psycopg.OperationalError)}: "
              f"{str(e).splitlines()[0]!r}; closed={held.closed}")  # fmt: skip
    try:
        held.execute("SELECT 1")
    except psycopg.Error as e:
        print(f"  next use: {type(e).__name__}: {str(e).splitlines()[0]!r}")
    try:
        listener.execute("SELECT 1")
    except psycopg.Error as e:
        print(f"  the LISTEN connection: {type(e).__name__} sqlstate={e.sqlstate}")
    server.stop()
    try:
        psycopg.connect(dsn, connect_timeout=2)
    except psycopg.OperationalError as e:
        print(f"connect while stopped: OperationalError (sqlstate={e.sqlstate}): {str(e).splitlines()[0][:120]!r}")
    server.start()
    print("AdminShutdown is OperationalError:", issubclass(errors.AdminShutdown, psycopg.OperationalError))

    # a pool across a restart
    pool = ConnectionPool(dsn, min_size=2, max_size=4, open=True, check=ConnectionPool.check_connection,
                          kwargs={"autocommit": True}, timeout=5)  # fmt: skip
    pool.wait(5)
    with pool.connection() as conn:
        conn.execute("SELECT 1")
    server.restart()
    t = time.perf_counter()
    with pool.connection() as conn:
        conn.execute("SELECT 1")
    print(
        f"ConnectionPool(check=check_connection) after a restart: next connection() works, {1000 * (time.perf_counter() - t):.0f} ms"
    )
    pool.close()
    pool = ConnectionPool(dsn, min_size=1, max_size=2, open=True, kwargs={"autocommit": True}, timeout=5)
    pool.wait(5)
    server.restart()
    try:
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        print("ConnectionPool without check after a restart: worked")
    except psycopg.OperationalError as e:
        print(f"ConnectionPool without check after a restart: first use raised {type(e).__name__}; ", end="")
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        print("the next one works (the pool discarded the broken connection)")
    pool.close()

    async def async_part() -> None:
        from psycopg_pool import AsyncConnectionPool

        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            lat = []
            for i in range(300):
                t = time.perf_counter()
                await aconn.execute("INSERT INTO chunks VALUES (%s, %s, 1, '')", ("async", i))
                lat.append(time.perf_counter() - t)
            summary("AsyncConnection one-row INSERT (autocommit)", lat)
        apool = AsyncConnectionPool(dsn, min_size=1, max_size=4, kwargs={"autocommit": True},
                                    check=AsyncConnectionPool.check_connection, open=False)  # fmt: skip
        await apool.open()
        async with apool.connection() as aconn, aconn.transaction():
            cursor = await aconn.execute("SELECT node FROM leases WHERE session = 'x' FOR UPDATE")
            print("AsyncConnectionPool + SELECT ... FOR UPDATE inside a transaction:", await cursor.fetchone())
        await apool.close()

    asyncio.run(async_part())
    server.cleanup()


# --------------------------------------------------------------------------------------------- S3


def s3_probe() -> None:
    import boto3
    import botocore
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    from tests.engines import S3_ACCESS_KEY, S3_SECRET_KEY, s3_config

    server = SeaweedFS()
    server.start()
    print(f"SeaweedFS start {server.start_seconds:.2f} s; boto3 {boto3.__version__}, botocore {botocore.__version__}")
    client = server.client()
    client.create_bucket(Bucket="probe")

    # recent boto3's default checksums against SeaweedFS
    default = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=S3_ACCESS_KEY,
                           aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1")  # fmt: skip
    body = os.urandom(300_000)
    for label, c in (("default config (checksums when_supported)", default), ("when_required", client)):
        try:
            c.put_object(Bucket="probe", Key=f"cs-{label[:4]}", Body=body)
            got = c.get_object(Bucket="probe", Key=f"cs-{label[:4]}")
            ok = got["Body"].read() == body
            print(f"{label}: put_object+get_object ok={ok}, response ChecksumCRC32={got.get('ChecksumCRC32')}")
        except Exception as e:
            print(f"{label}: {e!r}")
        try:
            c.upload_fileobj(
                __import__("io").BytesIO(os.urandom(20 * 1024 * 1024)),
                "probe",
                f"mp-{label[:4]}",
                Config=TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024),
            )
            head = c.head_object(Bucket="probe", Key=f"mp-{label[:4]}")
            print(
                f"  multipart upload_fileobj 20 MB (8 MB parts): ok, ETag {head['ETag']} size {head['ContentLength']}"
            )
        except Exception as e:
            print(f"  multipart: {e!r}")
        try:
            c.delete_objects(Bucket="probe", Delete={"Objects": [{"Key": "cs-defa"}, {"Key": "nope"}], "Quiet": True})
            print("  delete_objects ok")
        except Exception as e:
            print(f"  delete_objects: {e!r}")

    for size, n in ((40 * 1024, 300), (1024 * 1024, 100)):
        data = os.urandom(size)
        puts, gets = [], []
        for i in range(n):
            t = time.perf_counter()
            client.put_object(Bucket="probe", Key=f"lat/{size}/{i:08d}", Body=data)
            puts.append(time.perf_counter() - t)
        for i in range(n):
            t = time.perf_counter()
            client.get_object(Bucket="probe", Key=f"lat/{size}/{i:08d}")["Body"].read()
            gets.append(time.perf_counter() - t)
        summary(f"PUT {size // 1024} KB", puts)
        summary(f"GET {size // 1024} KB", gets)
    ranged = []
    for i in range(100):
        t = time.perf_counter()
        client.get_object(Bucket="probe", Key=f"lat/{1024 * 1024}/{i:08d}", Range="bytes=1000-65535")["Body"].read()
        ranged.append(time.perf_counter() - t)
    summary("ranged GET 64 KB of a 1 MB object", ranged)
    t = time.perf_counter()
    keys = [o["Key"] for p in client.get_paginator("list_objects_v2").paginate(Bucket="probe", Prefix="lat/40960/")
            for o in p.get("Contents", [])]  # fmt: skip
    print(f"list_objects_v2 by prefix, {len(keys)} keys (1000 per page): {1000 * (time.perf_counter() - t):.0f} ms")
    t = time.perf_counter()
    client.delete_objects(Bucket="probe", Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
    print(f"delete_objects of {len(keys)} keys: {1000 * (time.perf_counter() - t):.0f} ms")

    # a stopped store: how long does a call take to fail?
    server.kill()
    for label, config in (
        ("default botocore config (legacy retries, 60 s timeouts)", Config(region_name="us-east-1")),
        ("tests.engines.s3_config(): connect 2 s, read 10 s, standard retries total_max_attempts=2", s3_config()),
        (
            "retries total_max_attempts=1",
            s3_config().merge(Config(retries={"total_max_attempts": 1, "mode": "standard"})),
        ),
    ):
        c = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=S3_ACCESS_KEY,
                         aws_secret_access_key=S3_SECRET_KEY, config=config)  # fmt: skip
        t = time.perf_counter()
        try:
            c.put_object(Bucket="probe", Key="x", Body=b"x")
        except Exception as e:
            print(f"stopped store, {label}: {type(e).__name__} after {time.perf_counter() - t:.2f} s")
    server.cleanup()

    # a store that accepts connections and never answers (hung, or a half-open connection)
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(100)
    for label, config in (
        ("s3_config() (read_timeout 10 s, 2 tries)", s3_config()),
        (
            "read_timeout=2, total_max_attempts=1",
            s3_config().merge(Config(read_timeout=2, retries={"total_max_attempts": 1})),
        ),
    ):
        c = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{hung.getsockname()[1]}", aws_access_key_id=S3_ACCESS_KEY,
                         aws_secret_access_key=S3_SECRET_KEY, config=config)  # fmt: skip
        t = time.perf_counter()
        try:
            c.put_object(Bucket="probe", Key="x", Body=b"x")
        except Exception as e:
            print(f"hung store, {label}: {type(e).__name__} after {time.perf_counter() - t:.2f} s")
    hung.close()


# --------------------------------------------------------------------------------------------- PyJWT


def jwt_probe() -> None:
    import jwt

    keys = {"k1": b"a" * 32, "k2": b"b" * 32}
    now = int(time.time())
    token = jwt.encode({"sub": "s1", "exp": now + 60}, keys["k2"], algorithm="HS256", headers={"kid": "k2"})
    header = jwt.get_unverified_header(token)
    print("header:", header)
    print("decode with the kid's key:", jwt.decode(token, keys[header["kid"]], algorithms=["HS256"]))

    def attempt(label: str, fn: Callable[[], Any]) -> None:
        try:
            print(f"{label}: accepted {fn()}")
        except Exception as e:
            print(f"{label}: {type(e).__module__}.{type(e).__name__}: {e}")

    attempt("wrong key", lambda: jwt.decode(token, keys["k1"], algorithms=["HS256"]))
    expired = jwt.encode({"exp": now - 10}, keys["k1"], algorithm="HS256", headers={"kid": "k1"})
    attempt("expired 10 s ago", lambda: jwt.decode(expired, keys["k1"], algorithms=["HS256"]))
    attempt("expired 10 s ago, leeway=30", lambda: jwt.decode(expired, keys["k1"], algorithms=["HS256"], leeway=30))
    none = jwt.encode({"sub": "x"}, None, algorithm="none")
    print("alg none token:", none)
    attempt("alg none, algorithms=['HS256']", lambda: jwt.decode(none, keys["k1"], algorithms=["HS256"]))
    hs512 = jwt.encode({"sub": "x"}, keys["k1"], algorithm="HS512")
    attempt("HS512 token, algorithms=['HS256']", lambda: jwt.decode(hs512, keys["k1"], algorithms=["HS256"]))
    attempt("malformed", lambda: jwt.decode("not.a.token", keys["k1"], algorithms=["HS256"]))
    attempt("no algorithms=", lambda: jwt.decode(token, keys["k2"]))
    attempt(
        "require exp, token without",
        lambda: jwt.decode(hs512.replace("x", "x"), keys["k1"], algorithms=["HS512"], options={"require": ["exp"]}),
    )
    attempt("short key (10 bytes)", lambda: jwt.encode({"a": 1}, b"0123456789", algorithm="HS256"))
    print(
        "exception tree:",
        [c.__name__ for c in jwt.ExpiredSignatureError.__mro__[:4]],
        [c.__name__ for c in jwt.InvalidSignatureError.__mro__[:4]],
        [c.__name__ for c in jwt.DecodeError.__mro__[:3]],
    )


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("socketio", "all"):
        asyncio.run(socketio_probe())
    if which in ("postgres", "all"):
        postgres_probe()
    if which in ("s3", "all"):
        s3_probe()
    if which in ("jwt", "all"):
        jwt_probe()
