"""What the storage and nodes benchmarks run on: real engines (tests/engines.py) and
``camingest serve`` nodes on loopback, all started by a :class:`Rig` and all stopped when it
closes, also when the benchmark fails or is interrupted (SIGINT/SIGTERM); every process started
here also gets a parent-death signal, so none outlives a benchmark killed with -9.

Also: CPU seconds of a process tree, the load average, ``/metrics`` scraping, pg_stat_statements
and Redis INFO counts, so that every figure is printed with what the machine was doing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import ROOT
from tests.engines import (
    Nginx,
    PostgresServer,
    RedisServer,
    SeaweedFS,
    _die_with_parent,
    _spawner,
    free_port,
    process_tree,
    still_alive,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
PG_STATS = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all",
            "pg_stat_statements.max": "1000", "track_io_timing": "off"}  # fmt: skip


def load() -> float:
    """The 1-minute load average (2 shared cores: other developers' work shows here too)."""
    return round(os.getloadavg()[0], 2)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (and of their children already reaped)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


class CpuMeter:
    """CPU seconds of named process trees between ``start()`` and ``stop()``, as % of one core."""

    def __init__(self, trees: dict[str, Any]) -> None:
        self.trees = trees  # name -> callable returning the root pid (or None)
        self.before: dict[str, float] = {}
        self.began = 0.0
        self.result: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        out = {}
        for name, root in self.trees.items():
            pid = root() if callable(root) else root
            out[name] = cpu_seconds(list(process_tree(pid))) if pid else 0.0
        return out

    def start(self) -> None:
        self.before, self.began = self._sample(), time.monotonic()

    def stop(self) -> dict[str, float]:
        after, wall = self._sample(), time.monotonic() - self.began
        self.result = {name: round(100 * max(0.0, after[name] - self.before.get(name, 0.0)) / wall, 1) for name in after}
        return self.result


def http_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def scrape(url: str) -> dict[str, float]:
    """A node's /metrics as {sample name with labels minus node=...: value}."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = re.sub(r',?node="[^"]*"', "", name).replace("{}", "")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


class Sampler:
    """Scrapes gauges of some nodes every ``every`` s in a thread (upload backlog, durable lag)."""

    def __init__(self, urls: list[str], names: tuple[str, ...], every: float = 0.5) -> None:
        self.urls, self.names, self.every = urls, names, every
        self.samples: dict[str, list[float]] = {n: [] for n in names}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            totals = dict.fromkeys(self.names, 0.0)
            for url in self.urls:
                try:
                    metrics = scrape(url)
                except OSError:
                    continue
                for name in self.names:
                    if name.endswith("_seconds"):  # lags: the worst node
                        totals[name] = max(totals[name], metrics.get(name, 0.0))
                    else:
                        totals[name] += metrics.get(name, 0.0)
            for name, value in totals.items():
                self.samples[name].append(value)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class Node:
    """One ``camingest serve`` process (``python -m ingest.cli``, no test harness around it)."""

    def __init__(self, name: str, data: Path, args: list[str], env: dict[str, str], port: int) -> None:
        self.name, self.data, self.args, self.env, self.port = name, data, args, env, port
        self.log = data.parent / f"{name}.log"
        self.proc: subprocess.Popen[str] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 120) -> Node:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "a")  # noqa: SIM115 -- the child's stderr for its lifetime
        command = [sys.executable, "-m", "ingest.cli", "serve", "--port", str(self.port), "--data", str(self.data),
                   *self.args]  # fmt: skip
        # spawned by tests/engines.py's one long-lived thread: the parent-death signal is tied to it
        self.proc = _spawner().submit(
            subprocess.Popen, command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env}, preexec_fn=_die_with_parent(signal.SIGKILL),
        ).result()  # fmt: skip
        log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in iter(self.proc.stdout.readline, ""):
            if re.search(r"(https?://\S+?)/ ", line):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start in {timeout} s; log {self.log}")
        else:
            raise RuntimeError(f"{self.name} exited at start; its log:\n{self.log.read_text()[-3000:]}")
        stdout = self.proc.stdout
        threading.Thread(target=lambda: stdout.read(), daemon=True).start()  # keep the pipe drained
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def alive(self) -> bool:
        return self.pid is not None

    def kill9(self) -> float:
        """SIGKILL the node and its workers at once (a machine that dies); the time it was sent."""
        assert self.proc is not None
        tree = process_tree(self.proc.pid)
        at = time.monotonic()
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        _reap(tree)
        return at

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        tree = process_tree(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        _reap(tree)


def _reap(tree: dict[int, str]) -> None:
    deadline = time.monotonic() + 10
    while pids := still_alive(tree):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} survived SIGKILL")
        time.sleep(0.02)


class Rig:
    """Engines and nodes of one benchmark run; ``close()`` (or leaving the ``with``) stops all."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="camingest-bench-"))
        self.base.chmod(0o755)
        self.engines: list[Any] = []
        self.nodes: list[Node] = []
        self._pg: PostgresServer | None = None
        self._weed: SeaweedFS | None = None
        self._redis: RedisServer | None = None
        self._count = 0
        self._redis_cpu0 = 0.0

    def __enter__(self) -> Rig:
        # SIGTERM (a user's kill, a CI timeout) unwinds like Ctrl-C: the finally blocks stop everything
        signal.signal(signal.SIGTERM, _interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # engines ---------------------------------------------------------------------------------------
    @property
    def pg(self) -> PostgresServer:
        if self._pg is None:
            self._pg = self._engine(PostgresServer(settings=PG_STATS))
        return self._pg

    @property
    def weed(self) -> SeaweedFS:
        if self._weed is None:
            self._weed = self._engine(SeaweedFS())
        return self._weed

    @property
    def redis(self) -> RedisServer:
        if self._redis is None:
            self._redis = self._engine(RedisServer())
        return self._redis

    def _engine(self, engine: Any) -> Any:
        self.engines.append(engine)
        return engine.start()

    def nginx(self, ports: list[int]) -> Nginx:
        return self._engine(Nginx(ports))

    def fresh(self, what: str) -> tuple[str, str]:
        """A new database (pg_stat_statements in it) and bucket: (dsn, s3://bucket/)."""
        self._count += 1
        name = f"{what}-{os.getpid()}-{self._count}".lower().replace("_", "-")
        dsn = self.pg.create_database(name.replace("-", "_"))
        self.pg.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", dbname=name.replace("-", "_"))
        self.weed.create_bucket(name)
        return dsn, f"s3://{name}/"

    # nodes -----------------------------------------------------------------------------------------
    def node(self, name: str, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> Node:
        node = Node(name, self.base / f"data-{name}", list(args), {**self.weed_env(), **(env or {})},
                    port or free_port())  # fmt: skip
        self.nodes.append(node)
        return node.start()

    def weed_env(self) -> dict[str, str]:
        return self._weed.env if self._weed is not None else {}

    def cluster_args(self, dsn: str, store: str, name: str, workers: int, analysis: bool) -> list[str]:
        return ["--redis", self.redis.url, "--index", dsn, "--store", store, "--s3-endpoint", self.weed.endpoint,
                "--node-id", name, "--workers", str(workers), *([] if analysis else ["--no-analysis"])]  # fmt: skip

    def stop_nodes(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except Exception as exc:  # go on: the others must stop too
                print(f"# stopping {node.name}: {exc}", file=sys.stderr)
        self.nodes = []

    def close(self) -> None:
        self.stop_nodes()
        for engine in reversed(self.engines):
            try:
                engine.cleanup()
            except Exception as exc:
                print(f"# stopping {engine.name}: {exc}", file=sys.stderr)
        self.engines = []
        if os.environ.get("CAMINGEST_BENCH_KEEP"):  # the nodes' logs and data folders, to read after
            print(f"# kept {self.base}", file=sys.stderr)
        else:
            shutil.rmtree(self.base, ignore_errors=True)

    # counts of what the engines did ------------------------------------------------------------------
    def reset_counts(self, dsn: str | None) -> None:
        if dsn is not None:
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_stat_statements_reset()")
                conn.execute("SELECT pg_stat_reset_shared('wal')")
        if self._redis is not None:
            self._redis_call("CONFIG", "RESETSTAT")
            self._redis_cpu0 = self._redis_info()[1]

    def pg_counts(self, dsn: str) -> dict[str, Any]:
        """Statements executed (pg_stat_statements, this database), their time, and WAL bytes."""
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT s.query, s.calls, s.total_exec_time FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                "WHERE d.datname = current_database() AND s.query NOT ILIKE '%pg_stat%' ORDER BY s.calls DESC"
            ).fetchall()
            wal = conn.execute("SELECT wal_records, wal_bytes, wal_sync FROM pg_stat_wal").fetchone()
        top = [{"calls": r[1], "ms": round(r[2], 1), "query": " ".join(r[0].split())[:90]} for r in rows[:8]]
        return {"statements": sum(r[1] for r in rows), "exec_ms": round(sum(r[2] for r in rows), 1),
                "wal_bytes": int(wal[1]) if wal else 0, "wal_syncs": int(wal[2]) if wal else 0, "top": top}  # fmt: skip

    def redis_counts(self) -> dict[str, Any]:
        """Since ``reset_counts``: the nodes' commands by name (INFO commandstats; the bench's
        own INFO/CONFIG/HELLO left out), bytes received, and the server's CPU seconds."""
        commands, cpu, net_in = self._redis_info()
        for own in ("hello", "config|resetstat", "info", "client|setinfo"):
            commands.pop(own, None)
        return {"commands": sum(commands.values()), "by_command": commands, "net_in_bytes": net_in,
                "cpu_s": round(cpu - self._redis_cpu0, 3)}  # fmt: skip

    def _redis_info(self) -> tuple[dict[str, int], float, int]:
        text = self._redis_call("INFO", "all")
        commands: dict[str, int] = {}
        cpu, net_in = 0.0, 0
        for line in text.splitlines():
            if line.startswith("cmdstat_"):
                name, _, rest = line.partition(":")
                commands[name[8:]] = int(re.search(r"calls=(\d+)", rest).group(1))  # type: ignore[union-attr]
            elif line.startswith(("used_cpu_sys:", "used_cpu_user:")):
                cpu += float(line.split(":")[1])
            elif line.startswith("total_net_input_bytes:"):
                net_in = int(line.split(":")[1])
        return commands, cpu, net_in

    def _redis_call(self, *args: str) -> str:
        import redis

        assert self._redis is not None
        client = redis.Redis(port=self._redis.port, decode_responses=True)
        try:
            answer = client.execute_command(*args)
        finally:
            client.close()
        if isinstance(answer, dict):  # redis-py parses INFO
            return "\n".join(f"{k}:{_flat(v)}" for k, v in answer.items())
        return str(answer)

    def pids(self) -> dict[str, Any]:
        """Root pids of the engines, for :class:`CpuMeter` (callables: nodes come and go)."""
        out: dict[str, Any] = {}
        for engine in self.engines:
            out[engine.name] = (lambda e=engine: e.pid if e.running else None)
        return out


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)
