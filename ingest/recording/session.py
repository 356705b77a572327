"""Recording sessions held open by this server process, and the registry that owns them.

A ``LiveSession`` is the in-memory side of one session being recorded: its WebM reader, its open
stream file and counters. Chunks are applied strictly in seq order under ``lock`` (python-socketio
runs event handlers concurrently). The durable side is ``storage.store``; a LiveSession can always
be rebuilt from it (after a restart, a resume reloads it without re-reading the stream).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from ingest.config import Settings
from ingest.exceptions import CapacityError, IngestError, UnauthorizedError
from ingest.media.webm import Unit, WebMReader, build_unit
from ingest.recording.ownership import Ownership
from storage.leases import Lease, LeaseLostError
from storage.records import ChunkRecord, merge_spans
from storage.store import SessionStore, hash_token, sha256_hex

log = logging.getLogger("camingest.sessions")


@dataclass(frozen=True)
class StagedChunk:
    """A chunk written and flushed to the raw stream, waiting for its index commit."""

    record: ChunkRecord  # what the commit records
    unit: Unit
    unit_bytes: bytes | None  # standalone WebM of the blocks it completed (None if none)
    error: IngestError | None  # the stream became unreadable at this chunk

    @property
    def seq(self) -> int:
        return self.record.seq


class LiveSession:
    def __init__(self, store: SessionStore, row: dict[str, Any], reader: WebMReader) -> None:
        self.store = store
        self.id: str = row["id"]
        self.token_hash: str = row["token_hash"]
        self.sub: str | None = row.get("sub")  # who started it (its token's sub): a recorder reaches only its own
        self.state: str = row["state"]
        self.error: str | None = row["error"]
        self.next_seq: int = row["next_seq"]
        self.bytes: int = row["bytes"]
        self.frames: int = row["frames"]
        self.first_ts_ms: float | None = row["first_ts_ms"]
        self.last_ts_ms: float | None = row["last_ts_ms"]
        self.reader = reader
        self.held = reader.held_bytes  # as last counted in the registry's total
        self.client = ""  # the client key that started or last resumed it (capacity per client)
        self.lock = asyncio.Lock()
        self._writer = store.stream_writer(self.id)

    def check_token(self, token: object) -> None:
        if not isinstance(token, str) or not hmac.compare_digest(hash_token(token), self.token_hash):
            raise UnauthorizedError(f"wrong or missing token for session {self.id}")

    def close_file(self) -> None:
        self._writer.close()

    # -- the chunk path (runs in a thread, under self.lock) ---------------------------------------
    def stage_chunk(self, seq: int, data: bytes, t_ms: float | None) -> StagedChunk:
        """Parse the chunk, write it durably to the raw stream, and prepare its index commit.

        A chunk the reader refuses (the stream is not one camingest reads from there on) is not
        written: the raw stream stays the acknowledged chunks; the commit only marks the session
        failed, and the client is told ``invalid_media`` (or ``unsupported``) with the reason."""
        reader = self.reader
        init_version, had_tracks = reader.init_version, bool(reader.tracks) and reader.init_complete
        try:
            unit = reader.feed(data)
        except IngestError as exc:  # invalid_media or unsupported: the stream is unreadable
            record = ChunkRecord(
                self.id, seq, self.bytes, len(data), sha256_hex(data), time.time(), t_ms, [], self.frames, 0, None,
                self.first_ts_ms, self.last_ts_ms, {}, exc.message,
            )  # fmt: skip
            return StagedChunk(record, Unit(), None, exc)
        offset = self.bytes
        self._writer.write_at(offset, data)

        video = reader.video_track
        frames_before, frames, keyframe, video_blocks = self.frames, 0, None, False
        first, last = self.first_ts_ms, self.last_ts_ms
        for block in unit.blocks:
            if video is None or block.track == video.number:  # audio only: its times make the duration
                if video is not None:
                    video_blocks = True
                    if block.keyframe:
                        keyframe = frames_before + frames
                    frames += block.frames
                ts = reader.ticks_to_ms(block.timecode)
                first = ts if first is None else min(first, ts)
                last = ts if last is None else max(last, ts)
        # only units with video go to the decoder (a block may show no frame: it still counts there)
        unit_bytes = build_unit(bytes(reader.init), unit.clusters) if video_blocks else None
        init = bytes(reader.init) if reader.init_version != init_version else None
        described = None
        if not had_tracks and reader.tracks and reader.init_complete:  # the Tracks are known now
            described = json.dumps(reader.video())
        runs = [(run.timecode, merge_spans((b.offset, len(b.data)) for b in run.blocks)) for run in unit.clusters]
        record = ChunkRecord(
            self.id, seq, offset, len(data), sha256_hex(data), time.time(), t_ms, runs, frames_before, frames,
            keyframe, first, last, reader.state(), None, init, described,
        )  # fmt: skip
        return StagedChunk(record, unit, unit_bytes, None)

    def apply(self, staged: StagedChunk) -> None:
        """Reflect a committed chunk in memory (a refused one only fails the session)."""
        if staged.error is not None:
            self.state, self.error = "failed", staged.error.message
            return
        record = staged.record
        self.next_seq = record.seq + 1
        self.bytes += record.size
        self.frames = record.frames_before + record.frames
        self.first_ts_ms, self.last_ts_ms = record.first_ts_ms, record.last_ts_ms


class SessionRegistry:
    """The sessions this process has open, by id (application state, never module-level).

    ``max_open_sessions`` bounds how many are recording at once."""

    def __init__(self, store: SessionStore, settings: Settings, ownership: Ownership | None = None) -> None:
        self.store = store
        self.settings = settings
        self.ownership = ownership  # several nodes: a session is recorded by its lease's holder only
        self._live: dict[str, LiveSession] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self.held_total = 0  # bytes of incomplete elements held by the open sessions' readers

    def check_held(self, incoming: int) -> None:
        """Before a chunk is taken: ``busy`` if its bytes could take the readers' held-back bytes,
        all sessions together, past ``max_held_bytes``."""
        if self.held_total + incoming > self.settings.max_held_bytes:
            raise CapacityError(
                f"the server holds {self.held_total} bytes of incomplete frames for its sessions, "
                f"the limit (max_held_bytes) is {self.settings.max_held_bytes}; retry later"
            )

    def count_held(self, session: LiveSession) -> None:
        """After a chunk: the session's reader holds ``held_bytes`` now."""
        held = session.reader.held_bytes
        self.held_total += held - session.held
        session.held = held

    def __len__(self) -> int:
        return len(self._live)

    def live(self) -> list[LiveSession]:
        return list(self._live.values())

    def _reader(self) -> WebMReader:
        return WebMReader(self.settings.max_element_bytes, max_blocks_per_feed=self.settings.max_blocks_per_chunk,
                          **self.settings.reader_limits())  # fmt: skip

    def held_by(self, client: str) -> int:
        """Sessions recording that ``client`` started or last resumed (its connections gone or not)."""
        return sum(1 for session in self._live.values() if session.client == client)

    def check_capacity(self, client: str) -> None:
        """Before ``client`` opens a session: ``busy`` beyond ``max_open_sessions``, beyond
        ``max_sessions_per_client``, or in the reserve (the last ``sessions_reserved``) unless
        the client records none yet."""
        settings, open_now = self.settings, len(self._live)
        if open_now >= settings.max_open_sessions:
            raise CapacityError(
                f"{open_now} sessions are recording, the limit (max_open_sessions) is "
                f"{settings.max_open_sessions}; try again later"
            )
        held = self.held_by(client) if client else 0
        if held >= settings.max_sessions_per_client:
            raise CapacityError(
                f"this client ({client}) is recording {held} sessions, the limit (max_sessions_per_client) is "
                f"{settings.max_sessions_per_client}; stop one first"
            )
        reserve = settings.reserved_sessions
        if held and open_now >= settings.max_open_sessions - reserve:
            raise CapacityError(
                f"{open_now} sessions are recording; the last {reserve} of max_open_sessions "
                f"({settings.max_open_sessions}) are kept for clients recording none (sessions_reserved), and this "
                f"client ({client}) records {held}; try again later"
            )

    async def create(
        self, mime: str, meta: dict[str, Any], sub: str | None = None, jti: str | None = None, client: str = ""
    ) -> tuple[LiveSession, str]:
        self.check_capacity(client)
        row, token = await asyncio.to_thread(self.store.create, mime, meta, sub, jti)
        self.store.remember(row)
        if self.ownership is not None:
            await self.ownership.claim(row["id"], new=True)
        session = LiveSession(self.store, row, self._reader())
        session.client = client
        self._live[session.id] = session
        return session, token

    async def get(self, session_id: str) -> LiveSession:
        """The live session, loading it from the store if this process has not got it open
        (first event after a restart). Raises ``UnknownSessionError``."""
        session = self._live.get(session_id)
        if session is not None:
            return session
        lock = self._loading.setdefault(session_id, asyncio.Lock())
        try:
            async with lock:
                session = self._live.get(session_id)
                if session is None:
                    try:
                        if self.ownership is not None:
                            row = await asyncio.to_thread(self.store.get_row, session_id)
                            if row["state"] == "recording":  # hand-over, or take-over of a dead node's
                                await self.ownership.claim(session_id)  # (its copy made whole here: adopt)
                        session = await asyncio.to_thread(self._load, session_id)
                    except OSError as exc:  # its stored stream unreadable here: the operator's, one line
                        if isinstance(exc, IngestError):
                            raise
                        log.error("session %s cannot be loaded on this node: %s", session_id, exc)
                        raise IngestError(f"session {session_id} cannot be read on this node (its stored stream "
                                          "is not whole here); the operator log says why") from None  # fmt: skip
                    if session.state == "recording":  # stopped/failed ones are answered, not kept
                        # handed over again (or its lease lost) while it was adopted and loaded:
                        # the hand-over's drop found nothing here to drop, so nothing may be kept
                        # now (it would count as recording here, with no lease, for good)
                        self.check_owned(session_id)
                        if len(self._live) >= self.settings.max_open_sessions:
                            raise CapacityError("too many open sessions (max_open_sessions); try again later")
                        self._live[session_id] = session
                        self.held_total += session.held
        finally:  # also when loading failed (an unknown id): no entry left behind per event
            if not lock.locked():
                self._loading.pop(session_id, None)
        return session

    def check_owned(self, session_id: str) -> None:
        """``LeaseLostError`` (busy) if this node is one of several and holds no lease of the
        session (handed over, or lost): the client resumes where it is recorded now."""
        if self.ownership is not None and self.ownership.lease(session_id) is None:
            raise LeaseLostError(f"session {session_id} is recorded by another node now; resume it there")

    def fence(self, session_id: str) -> Lease | None:
        """What a change of the session here (a chunk's commit, its state) must be conditional
        on: None on a single node (it owns everything), else this node's lease of it, checked
        by the index inside the change; ``LeaseLostError`` (busy) if this node holds none (lost
        at renewal, handed over): never an unconditional change on a cluster."""
        if self.ownership is None:
            return None
        lease = self.ownership.lease(session_id)
        if lease is None:
            raise LeaseLostError(f"this node no longer owns session {session_id}: reconnect and resume it")
        return lease

    def _load(self, session_id: str) -> LiveSession:
        row = self.store.get_row(session_id)
        self.store.remember(row)
        if row["state"] != "recording":  # answered, never fed: its stream is not read (maybe not here at all)
            return LiveSession(self.store, row, self._reader())
        init = self.store.init_segment(session_id) or b""
        state, pending = self.store.reader_state(session_id)
        if state is not None:
            reader = WebMReader.restore(
                state, init, pending, self.settings.max_element_bytes,
                max_blocks_per_feed=self.settings.max_blocks_per_chunk, **self.settings.reader_limits(),
            )  # fmt: skip
        else:
            reader = self._reader()
        return LiveSession(self.store, row, reader)

    def loading(self) -> int:
        """Sessions being loaded from the store right now (one lock each, removed when done)."""
        return len(self._loading)

    def loaded(self, session_id: str) -> LiveSession | None:
        """The session if this process has it open, without loading it."""
        return self._live.get(session_id)

    def mark_failed(self, session_id: str, message: str) -> None:
        """A failure found outside the chunk path (decoding): later chunks get invalid_media."""
        session = self._live.get(session_id)
        if session is not None:
            session.state, session.error = "failed", message
        self.forget(session_id)

    def forget(self, session_id: str) -> None:
        session = self._live.pop(session_id, None)
        if session is not None:
            self.held_total -= session.held
            session.close_file()

    def close_all(self) -> None:
        for session_id in list(self._live):
            self.forget(session_id)
