"""The nodes issue's figures (issue 23), each configuration side by side in one run:

    python3 -m bench.nodes_bench ingest  --clients 200 400 --nodes 1 2 --seconds 8
    python3 -m bench.nodes_bench live    --sessions 20 --nodes 1 2 3
    python3 -m bench.nodes_bench hop     --sessions 4 --rounds 1
    python3 -m bench.nodes_bench kill    --kills 10 --recorders 6
    python3 -m bench.nodes_bench sigterm --runs 5 --recorders 6
    python3 -m bench.nodes_bench enrol   --runs 3
    python3 -m bench.nodes_bench all [--quick]      # everything above (--quick: ~1 min each, small sizes)

Every part starts its own engines (PostgreSQL 15 with pg_stat_statements, SeaweedFS, Redis,
nginx: tests/engines.py) and ``camingest serve`` nodes on loopback ports (bench/rig.py) and stops
them all at the end, also on failure or Ctrl-C. Nodes are clustered (``--redis --index --store``)
behind nginx (round robin, WebSocket), each with its own data folder, as in tests/test_nodes.py.

- ``ingest``: N real-time recorders (``--no-analysis``) through nginx onto 1 node, then 2 nodes:
  ack p50/p95/p99, acks/s achieved against offered, CPU of every process (% of one core), and per
  chunk the PostgreSQL statements (pg_stat_statements), WAL bytes and Redis commands.
- ``live``: the same 20 real-time landmarked sessions (the fixture replayed at its recorded pace)
  through nginx onto 1, 2, 3 nodes sharing ``--workers-total`` analysis workers: ack p99, landmark
  lag p95 (capture to landmarks at the client), Redis PUBLISHes per landmarks event.
- ``hop``: the Redis hop of an emit: two watchers of every session, one connected to the owner
  node, one to the other node (joined to the session's room through Redis, as python-socketio's
  own ``enter_room`` does across nodes); for each landmarks event the arrival at both, paired.
- ``kill``: 3 nodes, recorders through nginx with the package's client (it reconnects, resumes,
  resends by itself); a node killed (-9, with its workers) ``--kills`` times, replaced each time
  by a fresh node on its port: for each session it owned, death to the first ack from another node
  (the resume's) and to the first chunk ack there.
- ``sigterm``: the same with SIGTERM: exit time, the node's own hand-over time (its log), and
  SIGTERM to the first ack elsewhere per session.
- ``enrol``: a person enrolled on node 0 while node 2 records their face: enrolment answered to
  the first landmarks from node 2 that name them.

Output: JSON lines on stdout and in bench/results/nodes_<part>.txt, plots in
bench/results/nodes_<part>.png (matplotlib). The machine: 2 shared cores; the load average is
printed with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import socketio

from bench.common import IMAGES, RECORDINGS, chunks_of, machine_notes, percentile
from bench.recorders import TimedClient, record_forever, run_recorders
from bench.rig import CpuMeter, Node, Rig, Sampler, http_json, load, scrape

OUT = Path(__file__).resolve().parent / "results"
SEED = [0]  # the part's --seed, for the report's header
LIVE_FIXTURE = "webcam_vp8_opus_250ms"
ENROL_FIXTURE = "webcam_vp8_kf1s_250ms"


def ms(values: list[float], q: float) -> float:
    return round(percentile(values, q), 1)


class Report:
    """JSON lines to stdout and to bench/results/nodes_<part>.txt; samples kept for the plot."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.lines = [f"# {machine_notes()}", f"# started {time.strftime('%Y-%m-%d %H:%M:%S')}, load {load()}, "
                      f"command: python3 -m bench.nodes_bench {' '.join(sys.argv[1:])}, seed {SEED[0]}"]  # fmt: skip
        self.samples: dict[str, dict[str, list[float]]] = {}
        print("\n".join(self.lines), flush=True)

    def add(self, record: dict[str, Any]) -> None:
        line = json.dumps({"part": self.part, **record})
        self.lines.append(line)
        print(line, flush=True)

    def note(self, text: str) -> None:
        self.lines.append(f"# {text}")
        print(f"# {text}", flush=True)

    def save(self, title: str, xlabel: str) -> None:
        OUT.mkdir(exist_ok=True)
        (OUT / f"nodes_{self.part}.txt").write_text("\n".join(self.lines) + "\n")
        if self.samples:
            from bench.plot import distributions

            distributions(self.samples, OUT / f"nodes_{self.part}.png", title, xlabel)


def nodes_meter(rig: Rig, nodes: list[Node], extra: dict[str, Any] | None = None) -> CpuMeter:
    trees: dict[str, Any] = {n.name: (lambda n=n: n.pid) for n in nodes}
    trees.update(rig.pids())
    trees.update(extra or {})
    return CpuMeter(trees)


def chunks_total(nodes: list[Node]) -> float:
    return sum(scrape(n.url).get("camingest_chunks_total", 0.0) for n in nodes if n.alive)


def per(count: float, chunks: float) -> float:
    return round(count / chunks, 3) if chunks else float("nan")


def cluster(rig: Rig, count: int, what: str, workers: int = 1, analysis: bool = False,
            env: dict[str, str] | None = None) -> tuple[list[Node], Any, str]:  # fmt: skip
    """``count`` clustered nodes on a fresh database and bucket, nginx in front."""
    dsn, store = rig.fresh(what)
    nodes = [rig.node(f"{what}{i}", *rig.cluster_args(dsn, store, f"{what}{i}", workers, analysis), env=env)
             for i in range(count)]  # fmt: skip
    lb = rig.nginx([n.port for n in nodes])
    return nodes, lb, dsn


def teardown(rig: Rig, lb: Any) -> None:
    rig.stop_nodes()
    lb.cleanup()
    rig.engines.remove(lb)


# ------------------------------------------------------------------------------------------ ingest


def ingest(args: argparse.Namespace) -> None:
    report = Report("ingest")
    with Rig() as rig:
        for clients in args.clients:
            for count in args.nodes:
                nodes, lb, dsn = cluster(rig, count, f"ingest{clients}n", analysis=False)
                try:
                    label = f"{clients} recorders, {count} node{'s' * (count > 1)}"
                    if args.idle:  # what the nodes cost PostgreSQL and Redis with nothing to do
                        rig.reset_counts(dsn)
                        time.sleep(args.idle)
                        report.add({"config": f"{count} idle nodes", "seconds": args.idle,
                                    "pg_statements_per_s": round(rig.pg_counts(dsn)["statements"] / args.idle, 1),
                                    "redis_commands_per_s": round(rig.redis_counts()["commands"] / args.idle, 1)})  # fmt: skip
                    meter = nodes_meter(rig, nodes)
                    marks: dict[str, Any] = {}

                    def start(meter: CpuMeter = meter, marks: dict[str, Any] = marks, nodes: list[Node] = nodes,
                              dsn: str = dsn) -> None:  # fmt: skip
                        rig.reset_counts(dsn)
                        marks["chunks"] = chunks_total(nodes)
                        marks["load"] = load()
                        meter.start()

                    def end(meter: CpuMeter = meter, marks: dict[str, Any] = marks, nodes: list[Node] = nodes,
                            dsn: str = dsn) -> None:  # fmt: skip
                        meter.stop()
                        marks["chunks"] = chunks_total(nodes) - marks["chunks"]
                        marks["pg"], marks["redis"] = rig.pg_counts(dsn), rig.redis_counts()

                    urls = [n.url for n in nodes]
                    with Sampler(urls, ("camingest_upload_backlog_bytes", "camingest_durable_lag_seconds",
                                        "camingest_event_loop_lag_seconds")) as sampler:  # fmt: skip
                        result = run_recorders(lb.url, clients, args.seconds, args.client_procs, start, end)
                    acks, chunks = result["acks"], marks["chunks"]
                    pg, rd = marks["pg"], marks["redis"]
                    report.samples.setdefault("ack latency (ms)", {})[label] = acks
                    report.add({
                        "config": label, "clients": clients, "nodes": count, "seconds": args.seconds,
                        "offered_acks_per_s": clients * 4, "acks_per_s": round(len(acks) / args.seconds, 1),
                        "errors": result["errors"], "late_blobs": result["late"],
                        "ack_p50_ms": ms(acks, 50), "ack_p95_ms": ms(acks, 95), "ack_p99_ms": ms(acks, 99),
                        "ack_max_ms": round(max(acks), 1) if acks else None,
                        "durable_lag_chunks_p50": percentile(result["durable_lag"], 50),
                        "durable_lag_chunks_p99": percentile(result["durable_lag"], 99),
                        "upload_backlog_MB_max": round(max(sampler.samples["camingest_upload_backlog_bytes"] or [0]) / 1e6, 1),
                        "durable_lag_s_max": round(max(sampler.samples["camingest_durable_lag_seconds"] or [0]), 2),
                        "loop_lag_ms_max": round(1000 * max(sampler.samples["camingest_event_loop_lag_seconds"] or [0]), 1),
                        "cpu_pct_of_one_core": {**meter.result, "recorders": result["clients_cpu_pct_of_one_core"]},
                        "load_before": marks["load"], "load_after": load(), "chunks_committed": chunks,
                        "pg_statements_per_chunk": per(pg["statements"], chunks),
                        "pg_exec_ms_per_chunk": per(pg["exec_ms"], chunks), "pg_wal_bytes_per_chunk": per(pg["wal_bytes"], chunks),
                        "redis_commands_per_chunk": per(rd["commands"], chunks), "redis_by_command": rd["by_command"],
                        "pg_top": pg["top"][:5],
                    })  # fmt: skip
                finally:
                    teardown(rig, lb)
    report.save("ack latency, real-time recorders (--no-analysis) through nginx", "ms from emit to ack")


# ------------------------------------------------------------------------------------------ live


def warm(nodes: list[Node], warmup: float) -> None:
    """Every node's analysis workers loaded before the measurement: a short session on each
    node (directly, not through nginx) until its first landmarks come back, then ``warmup`` s."""
    from ingest.client import CamingestClient

    async def one(node: Node) -> None:
        async with CamingestClient(node.url, ack_timeout=120) as client:
            session = await client.start("video/webm;codecs=vp8,opus")
            for data in chunks_of(LIVE_FIXTURE):
                await session.send(data)
                if session.frames:
                    break
                await asyncio.sleep(0.25)
            if not session.frames:
                await wait_for_landmarks(session, 120)
            await session.stop()

    async def all_of() -> None:
        await asyncio.gather(*(one(n) for n in nodes))

    asyncio.run(all_of())
    time.sleep(warmup)


async def wait_for_landmarks(session: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not session.frames and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def live_client(url: str, out: dict[str, list[float]], counts: Counter[str], start_at: float) -> None:
    """The fixture at its recorded pace (blob times from meta.json): ack latency, landmark lag."""
    chunks = chunks_of(LIVE_FIXTURE)
    times = json.loads((RECORDINGS / LIVE_FIXTURE / "meta.json").read_text())["times"]
    sio = socketio.AsyncClient(reconnection=False)
    t0 = 0.0

    @sio.on("landmarks")
    async def on_landmarks(data: dict[str, Any]) -> None:
        now = time.monotonic()
        counts["events"] += 1
        for frame in data["frames"]:
            counts["skipped" if frame.get("skipped") else "landmarked"] += 1
            out["lag"].append((now - t0) * 1000 - frame["pts_ms"])

    await sio.connect(url, transports=["websocket"], wait_timeout=60)
    await asyncio.sleep(max(0.0, start_at - time.monotonic()) + random.random() * 0.25)
    ack = await sio.call("start", {"mime": "video/webm;codecs=vp8,opus"}, timeout=60)
    session = {"session_id": ack["session_id"], "token": ack["token"]}
    t0 = time.monotonic()
    for seq, data in enumerate(chunks):
        await asyncio.sleep(max(0.0, t0 + times[seq][1] / 1000 - time.monotonic()))
        sent = time.perf_counter()
        answer = await sio.call("chunk", {**session, "seq": seq, "data": data}, timeout=60)
        if answer.get("ok"):
            out["ack"].append((time.perf_counter() - sent) * 1000)
        else:
            counts["error:" + answer["error"]["code"]] += 1
    await sio.call("stop", session, timeout=60)
    await asyncio.sleep(3)  # the last landmarks
    await sio.disconnect()


def live(args: argparse.Namespace) -> None:
    from ingest.analysis.engine.predictor import prepare_engine

    prepare_engine("numba")  # compiled once here: the nodes' workers load it from the cache
    report = Report("live")
    frames = json.loads((RECORDINGS / LIVE_FIXTURE / "expected.json").read_text())["video_frames"]
    with Rig() as rig:
        for count in args.nodes:
            workers = max(1, args.workers_total // count)
            nodes, lb, dsn = cluster(rig, count, f"live{count}n", workers=workers, analysis=True)
            try:
                warm(nodes, args.warmup)  # the workers load the predictor
                label = f"{count} node{'s' * (count > 1)} x {workers} worker{'s' * (workers > 1)}"
                meter = nodes_meter(rig, nodes)
                out: dict[str, list[float]] = {"ack": [], "lag": []}
                counts: Counter[str] = Counter()
                rig.reset_counts(dsn)
                before, load_before = chunks_total(nodes), load()
                meter.start()

                async def scenario(url: str, out: dict[str, list[float]], counts: Counter[str]) -> None:
                    start_at = time.monotonic() + 2
                    await asyncio.gather(*(live_client(url, out, counts, start_at) for _ in range(args.sessions)))

                asyncio.run(scenario(lb.url, out, counts))
                meter.stop()
                chunks = chunks_total(nodes) - before
                pg, rd = rig.pg_counts(dsn), rig.redis_counts()
                publishes = rd["by_command"].get("publish", 0)
                report.samples.setdefault("ack latency (ms)", {})[label] = out["ack"]
                report.samples.setdefault("landmark lag (ms)", {})[label] = out["lag"]
                report.add({
                    "config": label, "nodes": count, "workers_per_node": workers, "sessions": args.sessions,
                    "frames": frames * args.sessions, "landmarked": counts["landmarked"], "skipped": counts["skipped"],
                    "errors": {k: v for k, v in counts.items() if k.startswith("error")},
                    "ack_p50_ms": ms(out["ack"], 50), "ack_p99_ms": ms(out["ack"], 99),
                    "lag_p50_ms": ms(out["lag"], 50), "lag_p95_ms": ms(out["lag"], 95),
                    "cpu_pct_of_one_core": meter.result, "load_before": load_before, "load_after": load(),
                    "landmark_events": counts["events"], "redis_publish": publishes,
                    "redis_publish_per_event": per(publishes, counts["events"]),
                    "redis_commands_per_chunk": per(rd["commands"], chunks), "redis_by_command": rd["by_command"],
                    "pg_statements_per_chunk": per(pg["statements"], chunks), "chunks": chunks,
                })  # fmt: skip
            finally:
                teardown(rig, lb)
    report.save(f"{args.sessions} real-time landmarked sessions through nginx, 2 shared cores", "ms")


# ------------------------------------------------------------------------------------------ hop


async def join_room(redis_url: str, sid: str, room: str) -> None:
    """What python-socketio's AsyncRedisManager publishes to put a client of another node in a
    room: every node's listener handles it, the one holding ``sid`` acts."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        message = {"method": "enter_room", "sid": sid, "room": room, "namespace": "/", "host_id": "bench"}
        await client.publish("socketio", json.dumps(message))
    finally:
        await client.aclose()


def hop(args: argparse.Namespace) -> None:
    from ingest.analysis.engine.predictor import prepare_engine

    prepare_engine("numba")
    report = Report("hop")
    chunks = chunks_of(LIVE_FIXTURE)
    times = json.loads((RECORDINGS / LIVE_FIXTURE / "meta.json").read_text())["times"]
    with Rig() as rig:
        nodes, lb, _ = cluster(rig, 2, "hop", workers=1, analysis=True)
        try:
            warm(nodes, args.warmup)
            arrivals: dict[tuple[str, int], dict[str, float]] = {}
            owner_of: dict[str, int] = {}

            async def watcher(index: int) -> tuple[socketio.AsyncClient, str]:
                sio = socketio.AsyncClient(reconnection=False)

                @sio.on("landmarks")
                async def on_landmarks(data: dict[str, Any]) -> None:
                    key = (data["session_id"], data["frames"][0]["index"])
                    arrivals.setdefault(key, {})[f"w{index}"] = time.perf_counter()

                await sio.connect(nodes[index].url, transports=["websocket"])
                return sio, sio.get_sid("/")

            async def recording(index: int, watchers: list[str]) -> None:
                sio = socketio.AsyncClient(reconnection=False)
                await sio.connect(nodes[index].url, transports=["websocket"])  # this node owns the session
                ack = await sio.call("start", {"mime": "video/webm;codecs=vp8,opus"}, timeout=60)
                session = {"session_id": ack["session_id"], "token": ack["token"]}
                owner_of[ack["session_id"]] = index
                for sid in watchers:
                    await join_room(rig.redis.url, sid, ack["session_id"])
                await asyncio.sleep(0.3)  # the listeners have it: the first emits come after the first unit
                t0 = time.monotonic()
                for seq, data in enumerate(chunks):
                    await asyncio.sleep(max(0.0, t0 + times[seq][1] / 1000 - time.monotonic()))
                    await sio.call("chunk", {**session, "seq": seq, "data": data}, timeout=60)
                await sio.call("stop", session, timeout=60)
                await asyncio.sleep(3)
                await sio.disconnect()

            async def scenario() -> None:
                watchers = [await watcher(0), await watcher(1)]
                sids = [sid for _, sid in watchers]
                for _ in range(args.rounds):
                    await asyncio.gather(*(recording(i % 2, sids) for i in range(args.sessions)))
                for sio, _ in watchers:
                    await sio.disconnect()

            rig.reset_counts(None)
            load_before = load()
            asyncio.run(scenario())
            extra = []
            for (session_id, _), seen in arrivals.items():
                owner = owner_of.get(session_id)
                if owner is None or len(seen) < 2:
                    continue
                local, remote = seen[f"w{owner}"], seen[f"w{1 - owner}"]
                extra.append((remote - local) * 1000)
            report.samples["Redis hop: arrival at the other node's client minus the owner node's (ms)"] = {
                "paired, per landmarks event": extra}
            rd = rig.redis_counts()
            events = len(arrivals)
            report.add({
                "config": "2 nodes, 1 worker each; owner's client vs the other node's", "sessions": args.sessions * args.rounds,
                "events": events, "paired": len(extra),
                "missing_at_one_watcher": sum(1 for seen in arrivals.values() if len(seen) < 2),
                "hop_extra_p50_ms": round(percentile(extra, 50), 2), "hop_extra_p99_ms": round(percentile(extra, 99), 2),
                "hop_extra_max_ms": round(max(extra), 2) if extra else None,
                "redis_publish": rd["by_command"].get("publish", 0), "redis_cpu_s": rd["cpu_s"],
                "load_before": load_before, "load_after": load(),
            })  # fmt: skip
        finally:
            teardown(rig, lb)
    report.save("the Redis hop of an emit", "ms")


# ------------------------------------------------------------------------------------------ kill / sigterm


def owned_by(dsn: str, node: str) -> list[str]:
    """The sessions ``node`` records now (its lease, state recording)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT l.session_id FROM leases l JOIN sessions s ON s.id = l.session_id WHERE l.node = %s"
            " AND l.expires_at > EXTRACT(EPOCH FROM clock_timestamp()) AND s.state = 'recording'",
            (node,),
        ).fetchall()
    return sorted(r[0] for r in rows)


def recording_counts(nodes: list[Node]) -> dict[str, int]:
    out = {}
    for node in nodes:
        try:
            out[node.name] = http_json(node.url + "/api/health", timeout=5)["sessions_recording"]
        except OSError:
            out[node.name] = -1
    return out


def first_acks(clients: list[TimedClient], sessions: list[str], after: float) -> dict[str, dict[str, float]]:
    """For each session: the first ack (any event, and the first chunk ack) received over a
    connection made after ``after``, in seconds since ``after``."""
    out: dict[str, dict[str, float]] = {}
    for client in clients:
        reconnects = [t for t in client.connects if t > after]
        if not reconnects:
            continue
        since = reconnects[0]
        for at, event, session_id in client.acked:
            if session_id in sessions and at > since:
                entry = out.setdefault(session_id, {})
                entry.setdefault("any", at - after)
                if event == "chunk":
                    entry.setdefault("chunk", at - after)
    return out


def losses(args: argparse.Namespace, how: str) -> None:
    report = Report(how)
    env = {"CAMINGEST_LEASE_S": str(args.lease_s), "CAMINGEST_SEGMENT_S": str(args.segment_s)}
    rounds = args.kills if how == "kill" else args.runs
    with Rig() as rig:
        nodes, lb, dsn = cluster(rig, 3, how, analysis=False, env=env)
        report.note(f"lease_s {args.lease_s}, segment_s {args.segment_s}, {args.recorders} recorders through nginx, "
                    f"3 nodes (--no-analysis)")  # fmt: skip
        firsts: list[float] = []
        chunk_firsts: list[float] = []
        exits: list[float] = []
        try:

            async def scenario() -> None:
                stop = asyncio.Event()
                errors: Counter[str] = Counter()
                clients: list[TimedClient] = []
                tasks = [asyncio.create_task(record_forever(lb.url, clients, stop, errors)) for _ in range(args.recorders)]
                try:
                    for round_ in range(rounds):
                        # steady: every node records something (a replaced one too)
                        deadline = time.monotonic() + 30
                        while True:
                            counts = await asyncio.to_thread(recording_counts, nodes)
                            if min(counts.values()) > 0 or time.monotonic() > deadline:
                                break
                            await asyncio.sleep(0.5)
                        victim_index = max(range(len(nodes)), key=lambda i: counts[nodes[i].name])
                        victim = nodes[victim_index]
                        theirs = await asyncio.to_thread(owned_by, dsn, victim.name)
                        load_before = load()
                        exit_s = handover_s = None
                        if how == "kill":
                            at = await asyncio.to_thread(victim.kill9)
                        else:
                            assert victim.proc is not None
                            at = time.monotonic()
                            victim.proc.send_signal(signal.SIGTERM)
                            await asyncio.to_thread(victim.proc.wait, 60)
                            exit_s = time.monotonic() - at
                            found = re.findall(r"handed over in ([\d.]+) s", victim.log.read_text())
                            handover_s = float(found[-1]) if found else None
                            exits.append(exit_s)
                        wait_until = time.monotonic() + args.lease_s + 60
                        while time.monotonic() < wait_until:
                            got = first_acks(clients, theirs, at)
                            if all("any" in got.get(s, {}) for s in theirs):
                                break
                            await asyncio.sleep(0.2)
                        got = first_acks(clients, theirs, at)
                        times = [got[s]["any"] for s in theirs if "any" in got.get(s, {})]
                        chunk_times = [got[s]["chunk"] for s in theirs if "chunk" in got.get(s, {})]
                        firsts.extend(times)
                        chunk_firsts.extend(chunk_times)
                        report.add({"round": round_ + 1, "victim": victim.name, "sessions": len(theirs),
                                    "resumed": len(times), "first_ack_s": [round(t, 2) for t in sorted(times)],
                                    "first_chunk_ack_s": [round(t, 2) for t in sorted(chunk_times)],
                                    "exit_s": None if exit_s is None else round(exit_s, 2), "handover_logged_s": handover_s,
                                    "load": load_before, "errors_so_far": dict(errors)})  # fmt: skip
                        # a fresh node in its place (new id, empty data folder), on its port
                        name = f"{how}r{round_ + 1}"
                        replacement = await asyncio.to_thread(
                            rig.node, name, *rig.cluster_args(dsn, _store_of(victim), name, 1, False), env=env,
                            port=victim.port)  # fmt: skip
                        nodes[victim_index] = replacement
                finally:
                    stop.set()
                    await asyncio.wait(tasks, timeout=60)
                report.note(f"recorder errors over the run: {dict(errors)}")

            asyncio.run(scenario())
        finally:
            teardown(rig, lb)
    summary: dict[str, Any] = {"summary": True, "lease_s": args.lease_s, "rounds": rounds, "sessions": len(firsts),
                               "first_ack_p50_s": round(percentile(firsts, 50), 2),
                               "first_ack_p95_s": round(percentile(firsts, 95), 2),
                               "first_chunk_ack_p50_s": round(percentile(chunk_firsts, 50), 2),
                               "first_chunk_ack_p95_s": round(percentile(chunk_firsts, 95), 2)}  # fmt: skip
    if exits:
        summary |= {"exit_p50_s": round(percentile(exits, 50), 2), "exit_max_s": round(max(exits), 2)}
    report.add(summary)
    what = "kill -9" if how == "kill" else "SIGTERM"
    report.samples[f"{what} to the first ack on another node (s), lease_s {args.lease_s}"] = {
        "first ack (the resume)": firsts, "first chunk ack": chunk_firsts}
    if exits:
        report.samples[f"{what} to the first ack on another node (s), lease_s {args.lease_s}"]["node exit"] = exits
    report.save(f"{what} of a node of 3, {args.recorders} recorders", "s")


def _store_of(node: Node) -> str:
    return node.args[node.args.index("--store") + 1]


# ------------------------------------------------------------------------------------------ enrol


async def enrol(url: str, name: str, photo: Path) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("name", name)
    form.add_field("file", photo.read_bytes(), filename=photo.name, content_type="application/octet-stream")
    async with aiohttp.ClientSession() as http, http.post(f"{url}/api/gallery", data=form) as response:
        return response.status, await response.json()


def enrolment(args: argparse.Namespace) -> None:
    from ingest.analysis.engine.predictor import prepare_engine
    from ingest.client import CamingestClient

    prepare_engine("numba")
    report = Report("enrol")
    chunks = chunks_of(ENROL_FIXTURE)
    delays: list[float] = []
    with Rig() as rig:
        nodes, lb, _ = cluster(rig, 3, "enrol", workers=1, analysis=True)
        try:
            warm(nodes, args.warmup)

            def named(session: Any) -> bool:
                return any((face.get("identity") or {}).get("name") == "Barack Obama"
                           for f in session.frames.values() for face in f.get("faces") or [])  # fmt: skip

            async def one() -> dict[str, Any]:
                async with CamingestClient(nodes[2].url) as client:
                    session = await client.start("video/webm;codecs=vp8")
                    pending = iter(chunks)
                    for chunk in pending:  # until node 2 has seen the face, and named nobody
                        await session.send(chunk)
                        await asyncio.sleep(0.25)
                        if any(f.get("faces") for f in session.frames.values()):
                            break
                    assert not named(session), "named before the enrolment: the gallery was not empty"
                    loop = asyncio.get_running_loop()
                    asked = loop.time()
                    status, body = await enrol(nodes[0].url, "Barack Obama", IMAGES / "obama.jpg")
                    assert status == 201, body
                    answered = loop.time()
                    seen = None
                    for chunk in pending:
                        await session.send(chunk)
                        deadline = loop.time() + 0.25
                        while loop.time() < deadline and seen is None:
                            if named(session):
                                seen = loop.time()
                            await asyncio.sleep(0.01)
                        if seen is not None:
                            break
                    await session.stop()
                    async with aiohttp.ClientSession() as http:
                        await http.delete(f"{nodes[0].url}/api/gallery/Barack Obama")
                    await asyncio.sleep(1.5)  # the removal reaches every node
                    return {"enrol_request_s": round(answered - asked, 2),
                            "named_after_answer_s": None if seen is None else round(seen - answered, 2)}

            for run in range(args.runs):
                load_before = load()
                result = asyncio.run(one())
                if result["named_after_answer_s"] is not None:
                    delays.append(result["named_after_answer_s"])
                report.add({"run": run + 1, **result, "load": load_before})
        finally:
            teardown(rig, lb)
    report.add({"summary": True, "runs": args.runs, "named": len(delays),
                "named_after_answer_p50_s": round(percentile(delays, 50), 2),
                "named_after_answer_max_s": round(max(delays), 2) if delays else None})  # fmt: skip
    report.save("", "")


# ------------------------------------------------------------------------------------------ main


QUICK = {
    "ingest": {"clients": [100, 200], "seconds": 5.0, "idle": 0.0},
    "live": {"sessions": 6, "nodes": [1, 2, 3], "warmup": 3.0},
    "hop": {"sessions": 2, "rounds": 1, "warmup": 3.0},
    "kill": {"kills": 3, "recorders": 4, "lease_s": 4.0},
    "sigterm": {"runs": 2, "recorders": 4, "lease_s": 4.0},
    "enrol": {"runs": 1, "warmup": 3.0},
}
PARTS = {"ingest": ingest, "live": live, "hop": hop, "kill": lambda a: losses(a, "kill"),
         "sigterm": lambda a: losses(a, "sigterm"), "enrol": enrolment}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m bench.nodes_bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="part", required=True)

    def part(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--quick", action="store_true", help="small sizes: about a minute")
        p.add_argument("--seed", type=int, default=23, help="seeds the recorders' random spread (printed)")
        return p

    p = part("ingest", "N real-time recorders (--no-analysis) on 1 node vs 2 nodes behind nginx")
    p.add_argument("--clients", type=int, nargs="+", default=[200, 400])
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--client-procs", type=int, default=2, help="processes the recorders are spread over")
    p.add_argument("--idle", type=float, default=2, help="seconds of idle nodes first (their background statements)")
    p = part("live", "the same real-time landmarked sessions on 1, 2, 3 nodes")
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--workers-total", type=int, default=2, help="analysis workers shared out over the nodes (at least 1 each)")
    p.add_argument("--warmup", type=float, default=2, help="seconds after every node answered landmarks")
    p = part("hop", "an emit reaching a client on the owner node vs on another node (through Redis)")
    p.add_argument("--sessions", type=int, default=4, help="recorded at once, half on each node")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--warmup", type=float, default=2, help="seconds after every node answered landmarks")
    for name, what in (("kill", "kill -9 of a node: time to the first ack elsewhere"),
                       ("sigterm", "SIGTERM of a node: hand-over time")):  # fmt: skip
        p = part(name, what)
        if name == "kill":
            p.add_argument("--kills", type=int, default=10)
        else:
            p.add_argument("--runs", type=int, default=5)
        p.add_argument("--recorders", type=int, default=6)
        p.add_argument("--lease-s", type=float, default=5.0, help="the nodes' lease_s (the setting's default: 10)")
        p.add_argument("--segment-s", type=float, default=5.0, help="the nodes' segment_s (default 5)")
    p = part("enrol", "enrolment on node 0 to a face named on node 2")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=float, default=2, help="seconds after every node answered landmarks")
    part("all", "every part above with its defaults (or --quick sizes)")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    names = list(PARTS) if args.part == "all" else [args.part]
    for name in names:
        part_args = parser.parse_args([name]) if args.part == "all" else args
        if args.quick:
            for key, value in QUICK[name].items():
                setattr(part_args, key, value)
        SEED[0] = part_args.seed
        random.seed(part_args.seed)
        PARTS[name](part_args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
