"""Settings: one frozen dataclass, built from CLI flags and ``CAMINGEST_*`` environment variables
and passed down explicitly. Every limit of the server is here, with its default and why; also
where camingest keeps derived files (``cache_dir``)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, fields
from pathlib import Path

from storage.objects import ObjectStoreSettings
from storage.store import SessionStore

# ingest/analysis/engine/descriptor.py's engines (named here: settings sit below the analysis)
DESCRIPTOR_ENGINES = ("onnxruntime", "opencv", "numpy", "dlib")


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8080

    # Largest accepted chunk (one MediaRecorder blob). 250 ms of 1080p VP9 stays well below this;
    # larger chunks are refused with `too_large`.
    max_chunk_bytes: int = 8 * 1024 * 1024
    # Largest accepted snapshot file; larger ones are refused with `too_large`.
    max_snapshot_bytes: int = 16 * 1024 * 1024
    # Largest decoded snapshot (width x height) a snapshot may declare; checked from the header
    # before any decoding, so an image bomb costs nothing.
    max_snapshot_pixels: int = 40_000_000
    # Blocks (frames) one chunk may complete; parsing costs per block, and an 8 MB chunk could
    # hold a million tiny ones. A 250 ms MediaRecorder blob completes a few dozen.
    max_blocks_per_chunk: int = 5000
    # Snapshots are analysed at most this large (width x height): bigger ones are decoded
    # reduced and resized first (points scaled back), so one costs at most ~0.25 s of a worker.
    max_snapshot_analysis_pixels: int = 1_000_000
    # Snapshots waiting for analysis, all sessions together; a worker takes one only when it has
    # nothing else in hand (live frames first). Beyond: the snapshot is stored, its analysis
    # answered with `busy`.
    max_snapshot_queue: int = 16
    # The lipstick try-on tutorial's pages (`image` data URLs, ingest/server/classic_images.py):
    # images one connection's session stores (each with its faces); past it the images are still
    # recoloured and answered, not stored (said once, as session_error `busy`). 1,800 = 5 min at
    # the page's 6 frames/s, ~55 MB of its JPEGs.
    max_classic_images: int = 1800
    # HOG upsampling for those images (a full detection on every frame, ~16 ms at 640x480 with 0):
    # 0 finds faces from ~80 px (a person in front of a webcam), 1 from ~40 px at ~3x the cost.
    classic_image_upsample: int = 0
    # Bytes of incomplete elements (a frame split across blobs) the readers of all open sessions
    # may hold together; each holds at most max_element_bytes. A chunk that could pass it: busy.
    max_held_bytes: int = 512 * 1024 * 1024
    # Sessions open for recording at once (started, not stopped); `start` beyond it is refused.
    max_open_sessions: int = 500
    # Largest single WebM element (a video frame) held back between blobs; bounds reader memory.
    max_element_bytes: int = 32 * 1024 * 1024
    # Largest frame (width x height) a video may declare: its track header, every keyframe's own
    # header, every H.264 sequence parameter set and AV1 sequence header (resolution changes
    # included) are read before any decoder sees the frame; beyond: invalid_media. 4096x2304
    # holds UHD (3840x2160) and DCI 4K (4096x2160), either way up; a decoder of that size costs
    # at most ~0.5 GB (README, "What camingest accepts").
    max_frame_pixels: int = 4096 * 2304
    # Bytes of Clusters a stream may send before its Tracks (valid Matroska that FFmpeg finds
    # through the SeekHead): the reader holds them in memory until the Tracks come (they count
    # in max_held_bytes); beyond: invalid_media. Browsers send the Tracks first.
    max_bytes_before_tracks: int = 16 * 1024 * 1024
    # Host header names the server answers (port ignored); others get 421 (DNS rebinding).
    # Empty = the --host address, localhost, 127.0.0.1 and ::1. "*" = any (behind a proxy that checks).
    allowed_hosts: tuple[str, ...] = ()
    # Reverse proxies (addresses or networks) whose X-Forwarded-For and X-Forwarded-Proto are
    # believed (ingest/server/proxies.py): per-client limits count the client behind them, and the
    # cookie is Secure when they say https. Empty: the headers are ignored (anyone can send them).
    trusted_proxies: tuple[str, ...] = ()
    # Access token: when set, every route but GET /api/health needs it (Bearer header, or the
    # cookie a page opened with ?token= sets), and Socket.IO needs auth={"token": ...} or the cookie.
    token: str | None = None
    # Signed tokens (JWT, HS256; ingest/server/principals.py): the keys, by key id, as `kid=secret`
    # lines in `secret_file` (--secret-file) and/or in `secret` (CAMINGEST_SECRET, lines too);
    # the first key mints, every listed key verifies (rotation: add the new one first, drop the
    # old one once its tokens have expired). Each secret at least 32 bytes.
    secret_file: str | None = None
    secret: str | None = None
    # Seconds of clock difference tolerated on a token's exp/nbf (the app's backend mints them).
    token_leeway_s: float = 5.0
    # Longest life `POST /api/tokens` and `camingest token create` give a token.
    max_token_ttl_s: float = 30 * 86400.0
    # Life of the cookie a page opened with ?token= gets (a signed token of its own, never the
    # token itself; at most the life of the token it stands for).
    cookie_ttl_s: float = 8 * 3600.0
    # How often each node reads the index's denylist of revoked tokens (a revocation reaches
    # every node within this, plus one index read).
    revocation_poll_s: float = 0.5
    # Webhooks (ingest/server/webhooks.py): URLs that get every event (--webhook, repeatable;
    # CAMINGEST_WEBHOOKS comma-separated), signed with `webhook_secret` (HMAC-SHA256).
    webhooks: tuple[str, ...] = ()
    webhook_secret: str | None = None
    # A delivery is retried with exponential backoff (webhook_retry_s, doubling, at most
    # webhook_max_retry_s apart) until it is webhook_max_age_s old, then dropped and counted.
    webhook_retry_s: float = 1.0
    webhook_max_retry_s: float = 600.0
    webhook_max_age_s: float = 24 * 3600.0
    # One delivery attempt's limit, and how many run at once (per node).
    webhook_timeout_s: float = 10.0
    webhook_concurrency: int = 4
    # Deliveries kept in the outbox (all nodes together); beyond it the oldest are dropped and
    # counted (a receiver down for days must not fill the index).
    webhook_max_outbox: int = 10_000
    # Events waiting to be written into the outbox (in memory); beyond: the oldest dropped, counted.
    webhook_queue: int = 1000
    # Retention (ingest/recording/retention.py): sessions that ended more than this many days
    # ago are deleted (0: kept for ever), checked every retention_check_s; held ones are kept.
    retention_days: float = 0.0
    retention_check_s: float = 3600.0
    # Shifts this server's clock for when sessions end and for retention (drills and tests: a
    # server "31 days later" without waiting for them). 0 in production.
    clock_offset_s: float = 0.0
    # The audit trail (ingest/server/audit.py): one JSON line per access to session data and
    # per gallery, hold or token change, appended to this file (unset: no audit trail).
    audit_log: str | None = None
    # Audit lines waiting for the writer thread; beyond: dropped and counted (never blocks).
    audit_queue: int = 10_000
    # Serve https and wss directly with this certificate chain and key (PEM files).
    tls_cert: str | None = None
    tls_key: str | None = None
    # The index: unset = DATA/index.sqlite3 (embedded SQLite); postgresql://USER@HOST:PORT/DB = one
    # PostgreSQL index (several nodes share it). `--index`, CAMINGEST_INDEX.
    index: str | None = None
    # Session bytes in S3-compatible object storage: s3://BUCKET/PREFIX (`--store`,
    # CAMINGEST_STORE; AWS's standard credential chain) at `s3_endpoint` (SeaweedFS, MinIO; unset
    # = AWS). Unset: the data folder is the store of record. With it, the data folder is the
    # write path and a cache of at most `local_cache_bytes` (stopped sessions already uploaded
    # are evicted and read back when asked for).
    store: str | None = None
    s3_endpoint: str | None = None
    # Acknowledged chunks go to object storage in segments: once the oldest has waited
    # segment_s or they reach segment_bytes, and at stop (a PUT per 250 ms chunk would cost 4
    # requests a second per recorder). `durable_seq` in acks says what is there.
    segment_s: float = 5.0
    segment_bytes: int = 8 * 1024 * 1024
    local_cache_bytes: int = 20 * 1024 * 1024 * 1024
    # A session read on this node this recently is not evicted (its readers keep their files).
    evict_quiet_s: float = 60.0
    # `stop` waits at most this long for the session's tail to reach object storage, so that its
    # answer can say every chunk is durable (a store that is down: the answer says how far it got).
    stop_durable_wait_s: float = 10.0
    # Several nodes, one service: Socket.IO over this Redis (python-socketio's AsyncRedisManager),
    # a node registry and hand-over messages (`--redis`, CAMINGEST_REDIS). Needs `index`
    # (PostgreSQL) and `store` (object storage): every node reads every session.
    redis: str | None = None
    # This node's name among them (unset: host-pid-random), and the address peers and the
    # operator see for it (unset: http://HOST:PORT as it listens).
    node_id: str | None = None
    node_url: str | None = None
    # A node owns a recording session by a lease of this many seconds, renewed every third of it:
    # a dead node's sessions continue elsewhere after at most this long.
    lease_s: float = 10.0
    # Events to the pages waiting to be sent (landmarks, errors): beyond, dropped and counted, so
    # that a Redis that hangs delays nothing else.
    max_queued_emits: int = 10_000
    # Your own pages (e.g. one written for the Node tutorials), served at /pages/ from this folder:
    # same origin as camingest, so their `io()` and `/socket.io/socket.io.js` work unchanged.
    pages_dir: str | None = None
    # `reprocess` runs its jobs on the Dask cluster whose scheduler is at this address
    # (tcp://host:8786; needs camingest[cluster] here and camingest on the workers).
    cluster: str | None = None
    # Allowed Origin headers for Socket.IO connections. Empty = same origin as the server only.
    # "*" allows any origin (only for trusted networks).
    cors_origins: tuple[str, ...] = ()
    # Chunks waiting for the store's writer thread across all sessions; beyond it `chunk` handlers
    # wait (back-pressure on the sockets) instead of queueing memory.
    max_pending_writes: int = 1024
    # A session still recording whose connection is gone and that received no chunk for this
    # long is ended as if `stop` had been sent (ended_by "idle"; finalized, landmarks filled).
    session_idle_s: float = 120.0
    # Sessions one Socket.IO connection may hold in `recording` state; `start` beyond it: busy.
    max_sessions_per_connection: int = 4
    # Capacity per client (ingest/server/clients.py's key: its address, behind trusted proxies
    # the one they saw): sessions recording that it started or resumed, its connections or not
    # (sessions its vanished connections left count until they end), and Socket.IO connections.
    # The last `sessions_reserved` of max_open_sessions (at most a tenth of it) go only to
    # clients recording none yet: a few clients cannot lock everyone else out.
    max_sessions_per_client: int = 64
    sessions_reserved: int = 50
    max_connections_per_client: int = 64
    # Before a Socket.IO connection has authenticated (its CONNECT accepted): the bytes it may
    # send (WebSocket bytes counted before they are parsed, long-polling bodies by length), the
    # seconds it has, and how many such connections one client may have at once.
    max_unauthenticated_bytes: int = 64 * 1024
    auth_timeout_s: float = 10.0
    max_unauthenticated_per_client: int = 8
    # Events of one connection being handled at once, and their bytes; past them nothing more
    # is read from its socket until one is answered (TCP pushes back on the sender).
    max_events_in_flight: int = 8
    max_event_bytes_in_flight: int = 32 * 1024 * 1024
    # A client's bad input (malformed packets, refused connections, ...) is logged once per
    # client and this long, with the count of those left out; never with a traceback.
    log_repeat_s: float = 10.0
    # Seconds a client has to stop before SIGTERM shutdown closes its connection anyway.
    shutdown_grace_s: float = 5.0
    # Bytes of JSON a session's `meta` (from `start`) may take; it is stored and listed with it.
    max_meta_bytes: int = 16 * 1024
    # How deeply arrays and objects may nest in JSON the server reads (Socket.IO events, request
    # bodies), checked before parsing: Python's parser recurses (100,000 `[` overflowed its stack).
    max_json_depth: int = 64
    # Binary attachments one Socket.IO event may carry (ours carry one: a chunk or a snapshot);
    # python-socketio holds all of an event's attachments until the last one arrives.
    max_event_attachments: int = 4
    # Threads writing and fsyncing chunk files; overlapping fsyncs of different sessions is what
    # lets one disk keep up with hundreds of recorders (BENCHMARKS.md).
    io_threads: int = 16
    # A session still "recording" whose last chunk is older than this may be deleted from the
    # sessions page (its tab was closed without stop); younger ones are refused (conflict).
    abandoned_after_s: float = 600.0

    # Largest video file `camingest import` and the upload form (POST /api/sessions) accept.
    max_import_bytes: int = 4 * 1024 * 1024 * 1024
    # Uploads received and imported at once (each holds a temporary file of up to
    # max_import_bytes in the data folder); more get HTTP 503.
    max_uploads: int = 2
    # An upload must keep pace: its body may take upload_idle_s plus one second per
    # upload_min_bytes_per_s bytes received; slower ones are cut off (HTTP 408), freeing the slot.
    upload_idle_s: float = 30.0
    upload_min_bytes_per_s: int = 16 * 1024
    # MJPEG preview viewers at once (each decodes in its own thread); more get HTTP 503.
    max_previews: int = 4
    # ... of them one client may hold (ingest/server/clients.py's key); more get 503 busy.
    max_previews_per_client: int = 2
    # A viewer that has not taken a part within this many seconds (it does not read) is dropped.
    preview_write_timeout_s: float = 10.0
    # A preview following a recording session that received nothing for this long ends.
    preview_idle_s: float = 30.0
    # An export's encoding taking longer than this is cancelled (it fails saying so).
    max_export_s: float = 3600.0
    # Thumbnails (GET /api/sessions/{id}/thumbnail.jpg) decoded at once, each in a thread (a
    # frame of the first ~15 s: up to ~0.5 s); more wait for a slot. Made once, then stored.
    max_thumbnails: int = 2
    # Sessions in one page of GET /api/sessions (the sessions page loads one at a time, then more
    # with `next_cursor`); ?limit= asks for fewer or more, up to max_sessions_page.
    sessions_page: int = 100
    max_sessions_page: int = 500
    # Photos one enrolment request (POST /api/gallery, `camingest gallery add`) may carry.
    max_photos_per_request: int = 10
    # Bytes one enrolment request's photos may take together (each at most max_snapshot_bytes).
    # The one enrolment slot is taken before the body is read, so this is also the most that
    # enrolments hold in memory at once; a declared Content-Length beyond it is refused unread.
    max_enrol_bytes: int = 64 * 1024 * 1024
    # Enrolment photos are analysed at most this large (width x height), decoded reduced and
    # resized like snapshots: a face needs no more, and a 40 MP photo would cost seconds.
    max_enrol_analysis_pixels: int = 4_000_000

    # Live analysis (see ingest/live/pipeline.py). False = ingest only: store and serve, no frames.
    analysis: bool = True
    # Worker processes for decoding + landmarks; 0 = one per core.
    workers: int = 0
    # Units (chunks) waiting for analysis per session; when full, the oldest unit's frames are
    # decoded but not landmarked (sent as skipped) so live results never lag behind.
    live_queue_units: int = 8
    # A session whose analysis falls further behind than this many units (chunks; never fewer
    # than live_queue_units) or bytes of them waiting lets them go: they are stored already, their
    # frames are sent skipped without being decoded, decoding starts again at the next keyframe
    # and the fill after stop landmarks the range. All sessions' waiting units together are held
    # to max_live_backlog_bytes the same way, so memory stays flat whatever the load.
    live_backlog_units: int = 32
    live_backlog_bytes: int = 16 * 1024 * 1024
    max_live_backlog_bytes: int = 256 * 1024 * 1024
    # Landmark engine: "numba" (dlib's model re-implemented: the same points, ~4x faster) or
    # "dlib" (dlib's own shape_predictor). See ingest/analysis/engine/predictor.py.
    landmark_engine: str = "numba"
    # Face detection (ingest/analysis/tracker.py): a half-size HOG pass for new faces every
    # `detect_every` frames; faces under 160 px re-anchored in a crop around them every
    # `anchor_every` frames; a full "sweep" at `detect_upsample` every `sweep_every` frames and
    # after scene cuts. Upsample 1 finds faces from ~40 px, 0 from ~80 px at a quarter the cost.
    detect_every: int = 30
    anchor_every: int = 5
    sweep_every: int = 300
    detect_upsample: int = 1
    # Share of a live worker's time sweeps may take when they are due while other sessions' frames
    # wait for it (many sessions starting or cutting to a new scene together): a sweep beyond it
    # is put off to a later frame, a quick pass (half size) standing in, and the frames until a
    # sweep on time are sent `provisional` and given their final result by the fill after stop
    # (stored == batch). 0: no sweep live at all (quick passes; every frame filled after stop).
    sweep_share: float = 0.3
    sweep_burst_s: float = 0.1  # what the budget holds at most (~2 sweeps of 640x480 at once)
    # Identification against the gallery (ingest/analysis/identity.py): the largest descriptor distance
    # that names a face (dlib's documented 0.6), and how often (frames) a tracked face's
    # descriptor is computed again (~10-30 ms each; 90 = every 3 s at 30 fps).
    identity_threshold: float = 0.6
    identify_every: int = 90
    # Share of a live worker's time descriptors may take (a token bucket, 0.5 s burst): under
    # load names come a few seconds later instead of landmarks being skipped. Batch: unbounded.
    identify_share: float = 0.15
    # Who computes the descriptors: dlib's own ResNet weights run by onnxruntime (the same
    # vectors within 1e-6, ~3 ms a face here instead of ~57 ms: the dlib-bin wheel has no
    # BLAS), or "dlib" (dlib's own network), "opencv", "numpy". See ingest/analysis/engine/descriptor.py.
    descriptor_engine: str = "onnxruntime"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not a TCP port; allowed: 0-65535 (0 picks a free one)")
        if self.workers < 0:
            raise ValueError(f"workers is {self.workers}; allowed: 1 or more processes, or 0 for one per core")
        if self.landmark_engine not in ("numba", "dlib"):
            raise ValueError(f"landmark_engine is {self.landmark_engine!r}; allowed: numba, dlib")
        if self.sweep_burst_s < 0:
            raise ValueError(f"sweep_burst_s is {self.sweep_burst_s}; allowed: 0 or more seconds")
        if not 0 <= self.sweep_share <= 1:
            raise ValueError(f"sweep_share is {self.sweep_share}; allowed: 0 (no live sweeps) to 1 (a share of a worker's time)")
        if min(self.detect_every, self.anchor_every, self.sweep_every) < 1:
            raise ValueError("detect_every, anchor_every and sweep_every must be at least 1")
        if self.sweep_every % self.detect_every:
            raise ValueError(
                f"sweep_every ({self.sweep_every}) must be a multiple of detect_every ({self.detect_every})"
            )
        if self.pages_dir is not None and not Path(self.pages_dir).is_dir():
            raise ValueError(f"the pages folder {self.pages_dir} does not exist (--pages / CAMINGEST_PAGES_DIR)")
        if self.redis is not None and (self.store is None or not (self.index or "").startswith(("postgresql://", "postgres://"))):
            raise ValueError(
                "--redis joins a cluster of nodes, which share one index and one object store: "
                "give --index postgresql://... and --store s3://... as well"
            )
        if self.lease_s < 1:
            raise ValueError(f"lease_s is {self.lease_s:g}; allowed: at least 1 (seconds)")
        if self.store is not None and not self.store.startswith("s3://"):
            raise ValueError(f"--store {self.store!r} is not s3://BUCKET/PREFIX (CAMINGEST_STORE)")
        if self.descriptor_engine not in DESCRIPTOR_ENGINES:
            raise ValueError(f"descriptor_engine is {self.descriptor_engine!r}; allowed: {', '.join(DESCRIPTOR_ENGINES)}")
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies entry {entry!r} is not an IP address or network "
                                 "(e.g. 127.0.0.1, 10.0.0.0/8)") from None  # fmt: skip
        if self.max_frame_pixels < 1:
            raise ValueError(f"max_frame_pixels is {self.max_frame_pixels}; allowed: 1 or more")
        if self.detect_upsample not in (0, 1, 2):
            raise ValueError(f"detect_upsample is {self.detect_upsample}; allowed: 0, 1, 2")
        if self.classic_image_upsample not in (0, 1, 2):
            raise ValueError(f"classic_image_upsample is {self.classic_image_upsample}; allowed: 0, 1, 2")
        if self.webhooks and not self.webhook_secret:
            raise ValueError("webhooks need a signing secret: set --webhook-secret or CAMINGEST_WEBHOOK_SECRET "
                             "(the receivers verify each delivery with it)")
        for url in self.webhooks:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"webhook {url!r} is not an http:// or https:// URL")
        if self.retention_days < 0:
            raise ValueError(f"retention_days is {self.retention_days:g}; allowed: 0 (keep for ever) or more")
        if self.webhook_concurrency < 1 or self.webhook_max_outbox < 1 or self.webhook_queue < 1:
            raise ValueError("webhook_concurrency, webhook_max_outbox and webhook_queue must be at least 1")
        for name in ("max_previews_per_client", "max_sessions_per_client", "max_connections_per_client", "max_unauthenticated_per_client",
                     "max_events_in_flight", "max_event_bytes_in_flight", "max_unauthenticated_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}; allowed: 1 or more")
        for name in ("preview_write_timeout_s", "preview_idle_s", "max_export_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} is {getattr(self, name)}; allowed: more than 0 (seconds)")
        if self.sessions_reserved < 0:
            raise ValueError(f"sessions_reserved is {self.sessions_reserved}; allowed: 0 or more")
        if self.max_classic_images < 0:
            raise ValueError(f"max_classic_images is {self.max_classic_images}; allowed: 0 (store none) or more")

    def object_store(self) -> ObjectStoreSettings | None:
        """What the store needs to use object storage (None: the data folder only)."""
        if self.store is None:
            return None
        return ObjectStoreSettings(
            self.store, self.s3_endpoint, self.segment_s, self.segment_bytes, self.local_cache_bytes, self.evict_quiet_s
        )

    def open_store(self) -> SessionStore:
        """The session store these settings name (not opened yet)."""
        return SessionStore(self.data_dir, self.max_pending_writes, index=self.index, objects=self.object_store(),
                            clock_offset_s=self.clock_offset_s)  # fmt: skip

    def reader_limits(self) -> dict[str, int]:
        """The WebM reader's limits for streams coming in (live chunks, imports, uploads)."""
        return {"max_frame_pixels": self.max_frame_pixels, "max_bytes_before_tracks": self.max_bytes_before_tracks}

    @property
    def reserved_sessions(self) -> int:
        """The last sessions of ``max_open_sessions``, for clients recording none yet."""
        return min(self.sessions_reserved, self.max_open_sessions // 10)

    @property
    def worker_count(self) -> int:
        """Analysis worker processes: ``workers``, or one per core when it is 0."""
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)

    @property
    def max_message_bytes(self) -> int:
        """Socket.IO message limit: room for the largest chunk/snapshot plus its JSON envelope. A
        chunk between ``max_chunk_bytes`` and this gets a `too_large` ack; beyond it, the
        transport drops the message (engine.io's own limit)."""
        return 2 * max(self.max_chunk_bytes, self.max_snapshot_bytes) + 64 * 1024

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] | None = None, **overrides: object) -> Settings:
        """Defaults, then ``CAMINGEST_<FIELD>`` environment variables, then explicit overrides
        (CLI flags); ``None`` overrides are ignored."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(f"CAMINGEST_{f.name.upper()}")
            if raw is None:
                continue
            try:
                values[f.name] = _parse(f.type, raw)
            except ValueError:
                kind = "a whole number" if "int" in str(f.type) else "a number"
                raise ValueError(f"CAMINGEST_{f.name.upper()}={raw!r} is not {kind}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(str(values["data_dir"]))
        return cls(**values)  # type: ignore[arg-type]


def cache_dir() -> Path:
    """Where camingest keeps derived files (model arrays, compiled kernels): never the repo.
    ``CAMINGEST_CACHE_DIR``, else ``$XDG_CACHE_HOME/camingest``, else ``~/.cache/camingest``."""
    explicit = os.environ.get("CAMINGEST_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "camingest"


def _parse(type_name: object, raw: str) -> object:
    name = str(type_name)
    if name in ("bool", "<class 'bool'>"):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if name in ("int", "<class 'int'>"):
        return int(raw)
    if name in ("float", "<class 'float'>"):
        return float(raw)
    if name.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw
