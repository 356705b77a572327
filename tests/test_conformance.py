"""Any valid WebM or Matroska in, exact frames out (issue #20), and frame-size bombs refused
before decoding (issue #25, item 1), through a real server and ``camingest import``.

Every file of the conformance corpus (tests/fixtures/conformance/, figures from ffprobe in its
expected.json) is sent live to one real server (one analysis worker, a live queue of 2 units, so
small pieces make live analysis skip and the fill complete) in three cuttings, each its own
session: 200-300 kB pieces, 1-4 kB pieces, and cut at every Cluster start. Each file is also
imported with ``camingest import`` (in the background while the live sessions run), and the
live sessions are reprocessed with ``camingest reprocess`` at the end. For valid files:

* ``frames`` = ffprobe's decoded frames, everywhere (live, import); the summary says the video's
  codec and size (``null`` without video);
* raw.webm is the file byte for byte (imports of Matroska store the file itself);
* every frame index has its landmarks, none skipped (160x120 test patterns have no faces:
  every index present is the check), and recording.webm decodes to the same count;
* live == import == reprocess, frame for frame (index, pts_ms, faces), in every cutting.

Besides the corpus, made here from its packets: a valid file FFmpeg cannot open (Tracks after
the Clusters, no SeekHead), a VP8 stream whose fourth frame does not decode, and the frame-size
bomb of issue #25 (three keyframes declaring 16000x16000). Uploads (POST /api/sessions) are
checked against the same rule.

Refusals say exactly what is wrong, in the user's words, the same way everywhere: the raw
stream is the acknowledged chunks (a refused chunk is not stored), and an import leaves no
session behind, or a failed one saying why.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from storage.store import SessionStore
from tests import ebml_writer as w
from tests.client import Client, http_get, http_json, wait_for_summary, wait_until
from tests.conftest import ROOT, ServerProcess
from tests.fixtures.conformance.check_corpus import cuttings, vint  # the script's walk and cuttings

CORPUS = ROOT / "tests" / "fixtures" / "conformance"
EXPECTED = {n: e for n, e in json.loads((CORPUS / "expected.json").read_text()).items() if not n.startswith("_")}
LIVE_FILES = sorted(n for n in EXPECTED if not n.endswith(".mp4"))
VALID_FILES = sorted(n for n, e in EXPECTED.items() if e["valid"] and e["decodes"])
CUTTINGS = ("200-300kB", "1-4kB", "clusters")
LIMIT_TEXT = "the limit (max_frame_pixels) is 9,437,184"
UNKNOWN_CODEC = (
    "the video track's codec 'V_CAMINGEST/UNKNOWN' is not one camingest decodes; it reads VP8, VP9, AV1 and H.264 "
    "(V_VP8, V_VP9, V_AV1, V_MPEG4/ISO/AVC)"
)
CORRUPT_VP8 = "the VP8 frame at byte 4516 is damaged: its VP8 version is 7 (0-3 exist)"
UNDECODABLE = "the video does not decode: frame 3 at 0.134 s is damaged (vp8)"


# -- the streams ------------------------------------------------------------------------------------------
def mime_of(name: str) -> str:
    return "video/webm" if name.endswith(".webm") else "video/x-matroska"


@functools.cache
def undecodable() -> bytes:
    """VP8 whose fourth frame has a valid frame tag and random bytes after it (random.Random(0)):
    its headers pass, the decoder refuses it."""
    source = w.read_packets(CORPUS / "vp8_opus.webm")
    frames = list(source.frames[:10])
    rng = random.Random(0)
    size = len(frames[3].data)
    tag = 1 | (1 << 4) | (rng.randint(1, size - 3) << 5)  # inter frame, shown, first partition inside it
    frames[3] = w.Frame(tag.to_bytes(3, "little") + bytes(rng.getrandbits(8) for _ in range(size - 3)), frames[3].pts, False)
    return w.write([source.track], w.split_clusters(w.simple_blocks(frames), [4]), w.Layout(doc_type="webm"))


@functools.cache
def unseekable() -> bytes:
    """Tracks after the Clusters and no SeekHead pointing at them: valid Matroska that FFmpeg
    cannot open (it finds no Tracks), the live reader can (it waits for them)."""
    source = w.read_packets(CORPUS / "vp8_opus.webm")
    clusters = w.split_clusters(w.simple_blocks(source.frames), [10])
    return w.write([source.track], clusters, w.Layout("matroska", ("info", "clusters", "tracks")))


@functools.cache
def bomb() -> bytes:
    """Three VP8 keyframes of a real encoder (160x120) whose headers declare 16000x16000 (the
    issue's chunk drove a worker to 7.4 GB)."""
    source = w.read_packets(CORPUS / "vp8_opus.webm")
    key = source.frames[0].data
    big = key[:6] + (16000).to_bytes(2, "little") * 2 + key[10:]
    frames = [w.Frame(big, 40 * i, True) for i in range(3)]
    return w.write([source.track], [w.ClusterSpec(tuple(w.simple_blocks(frames)))], w.Layout(doc_type="webm"))


def ffprobe(path: Path) -> dict[str, Any]:
    """ffprobe's decoded video frames of a file (None: it reads no video stream in it)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
         "stream=nb_read_frames", "-of", "json", str(path)],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    streams = json.loads(out or "{}").get("streams", [])
    return {"frames": int(streams[0]["nb_read_frames"]) if streams else None}


def ffprobe_bytes(data: bytes, folder: Path, name: str) -> int:
    path = folder / name
    path.write_bytes(data)
    return ffprobe(path)["frames"] or 0


# -- a session sent live ------------------------------------------------------------------------------------
@dataclass
class Live:
    cutting: str
    session: dict[str, Any]
    pieces: list[bytes]
    acked: list[bytes] = field(default_factory=list)
    refused: dict[str, Any] | None = None  # the first refusal's ack error
    refused_seq: int | None = None
    events: dict[str, list[Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""
    recording: bytes = b""
    landmarks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.session["session_id"]


def settled(summary: dict[str, Any]) -> bool:
    """Nothing more will change: stopped with every frame landmarked and finalized, or failed."""
    if summary["state"] == "recording" or "fill" in summary:
        return False
    if summary["state"] == "failed":
        return True
    done = summary["analysed_frames"] == summary["frames"] and summary["skipped_frames"] == 0
    return (done and summary["finalized"]) or "landmarks_error" in summary


async def send_live(url: str, name: str, cutting: str, pieces: list[bytes]) -> Live:
    async with Client(url) as client:
        session = await client.start(mime_of(name), meta={"file": name, "cutting": cutting})
        live = Live(cutting, session, pieces)
        for seq, piece in enumerate(pieces):
            ack = await client.chunk(session, seq, piece)
            if not ack["ok"]:
                live.refused, live.refused_seq = ack["error"], seq
                break
            live.acked.append(piece)
        stopped = await client.stop(session)
        assert stopped["ok"], stopped
        base = f"{url}/api/sessions/{live.id}"
        live.summary = await wait_for_summary(base, settled, f"{name} ({cutting}) settles")
        if live.summary["state"] == "failed" and live.refused is None:  # failed while decoding, every chunk acked:
            # the index says failed before the server emits session_error (so that the page it
            # reaches reads the failure): the summary can be read first (CI saw no event yet)
            await wait_until(lambda: client.events.get("session_error"), f"{name} ({cutting}): session_error", 60)
        live.events = {k: list(v) for k, v in client.events.items() if v}
    _, live.raw, _ = await http_get(base + "/raw.webm")
    _, live.recording, _ = await http_get(base + "/recording.webm")
    _, body = await http_json(base + "/landmarks")
    live.landmarks = body["frames"]
    return live


# -- an import -----------------------------------------------------------------------------------------------
@dataclass
class Imported:
    returncode: int
    stdout: str  # with the lines written beside the progress bars (tqdm writes them there)
    stderr: list[str]  # without progress bars
    data: Path
    sessions: list[dict[str, Any]]
    landmarks: dict[str, list[dict[str, Any]]]
    raw: dict[str, bytes]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAMINGEST_WORKERS": "1"}
    return subprocess.run([sys.executable, "-m", "ingest.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)  # fmt: skip


def stderr_lines(text: str) -> list[str]:
    """What a person reads on stderr: the lines, without log lines and progress bars."""
    segments = (part.strip() for line in text.splitlines() for part in line.split("\r"))
    return [s for s in segments if s and " INFO " not in s and not s.startswith(("reprocess", "import "))]


def import_file(path: Path, data: Path) -> Imported:
    done = cli("import", str(path), "--data", str(data), "--workers", "1")
    store = SessionStore(data)
    store.open(recover=False)
    try:
        sessions = store.list_summaries()
        landmarks = {s["id"]: json.loads(store.landmarks_json(s["id"]))["frames"] for s in sessions}
        raw = {s["id"]: store.read_stream(s["id"], 0, s["bytes"]) for s in sessions}
    finally:
        store.close()
    return Imported(done.returncode, done.stdout, stderr_lines(done.stderr), data, sessions, landmarks, raw)


def faces_of(frames: list[dict[str, Any]]) -> list[tuple[int, float, Any]]:
    return [(f["index"], f["pts_ms"], f.get("faces", "skipped")) for f in frames]


# -- the run: one server, the imports in the background ------------------------------------------------------
class CorpusRun:
    def __init__(self, root: Path) -> None:
        self.root = root
        # a short live queue: chunks sent back to back make live analysis skip, the fill completes
        self.server = ServerProcess(root / "data", "--workers", "1", env={"CAMINGEST_LIVE_QUEUE_UNITS": "2"}).start()
        self._imports = concurrent.futures.ThreadPoolExecutor(1)
        extra = {"undecodable.webm": undecodable(), "bomb.webm": bomb(), "unseekable.mkv": unseekable()}
        for name, data in extra.items():
            (root / name).write_bytes(data)
        files = {name: CORPUS / name for name in EXPECTED} | {name: root / name for name in extra}
        self.files = files
        self.imports = {name: self._imports.submit(import_file, path, root / f"import-{name}") for name, path in files.items()}
        self._live: dict[str, dict[str, Live]] = {}

    def live(self, name: str) -> dict[str, Live]:
        """The file sent in the three cuttings (once per run)."""
        if name not in self._live:
            data = self.files[name].read_bytes()
            print(f"{name}: pieces cut with random.Random({name!r})")

            async def all_cuttings() -> dict[str, Live]:
                return {cut: await send_live(self.server.url, name, cut, pieces)
                        for cut, pieces in cuttings(name, data).items()}  # fmt: skip

            self._live[name] = asyncio.run(all_cuttings())
        return self._live[name]

    def imported(self, name: str) -> Imported:
        return self.imports[name].result(timeout=900)

    def close(self) -> None:
        self._imports.shutdown(cancel_futures=True)
        self.server.stop()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    corpus = CorpusRun(tmp_path_factory.mktemp("conformance"))
    yield corpus
    corpus.close()


def video_of(name: str) -> dict[str, Any] | None:
    video = EXPECTED[name]["video"]
    if video is None:
        return None
    return {"codec": video["codec_name"], "width": video["width"], "height": video["height"]}


# -- valid files --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in VALID_FILES if n in LIVE_FILES])
def test_live_in_three_cuttings_gives_ffprobes_frames(run, name, tmp_path):
    data, expected = (CORPUS / name).read_bytes(), EXPECTED[name]
    frames = (expected["video"] or {}).get("nb_read_frames", 0)
    sessions = run.live(name)
    for cut, live in sessions.items():
        where = f"{name} cut {cut}"
        assert live.refused is None, f"{where}: {live.refused}"
        summary = live.summary
        assert (summary["state"], summary.get("error"), summary.get("landmarks_error")) == ("stopped", None, None), where
        assert (summary["frames"], summary["analysed_frames"], summary["skipped_frames"]) == (frames, frames, 0), where
        assert summary["video"] == video_of(name), where
        assert (summary["bytes"], summary["chunks"]) == (len(data), len(live.pieces)), where
        assert live.raw == data, where
        assert [f["index"] for f in live.landmarks] == list(range(frames)), where
        assert not any(f.get("skipped") for f in live.landmarks), where
        assert not live.events.get("session_error"), where
        if frames:
            assert ffprobe_bytes(live.recording, tmp_path, f"{cut}.mkv") == frames, f"{where}: recording.webm"
    first, *others = sessions.values()
    for live in others:  # the same frames whatever the cutting
        assert faces_of(live.landmarks) == faces_of(first.landmarks), f"{name}: {live.cutting} vs {first.cutting}"


@pytest.mark.parametrize("name", VALID_FILES)
def test_import_gives_the_same_frames(run, name, tmp_path):
    expected = EXPECTED[name]
    frames = (expected["video"] or {}).get("nb_read_frames", 0)
    imported = run.imported(name)
    assert imported.returncode == 0, imported.stderr
    (session,) = imported.sessions
    assert (session["state"], session.get("error"), session.get("landmarks_error")) == ("stopped", None, None)
    assert (session["frames"], session["analysed_frames"], session["skipped_frames"]) == (frames, frames, 0)
    assert session["video"] == video_of(name)
    landmarks = imported.landmarks[session["id"]]
    assert [f["index"] for f in landmarks] == list(range(frames))
    if name in LIVE_FILES:  # WebM/Matroska: the file itself is the raw stream, its frames the live ones
        assert imported.raw[session["id"]] == (CORPUS / name).read_bytes()
        assert faces_of(landmarks) == faces_of(run.live(name)["clusters"].landmarks)
    if frames:
        recording = SessionStore(imported.data).files(session["id"]).recording
        assert ffprobe(recording)["frames"] == frames


def test_tracks_after_clusters_without_a_seekhead(run, tmp_path):
    """FFmpeg cannot read this file; camingest takes it, and what it serves FFmpeg reads."""
    data = unseekable()
    assert ffprobe_bytes(data, tmp_path, "as-is.mkv") == 0  # FFmpeg alone: no video stream found
    for cut, live in run.live("unseekable.mkv").items():
        summary = live.summary
        assert (summary["state"], summary["frames"], summary["analysed_frames"], summary["finalized"]) == (
            "stopped", 50, 50, True
        ), cut
        assert live.raw == data and [f["index"] for f in live.landmarks] == list(range(50)), cut
        assert ffprobe_bytes(live.recording, tmp_path, f"{cut}.mkv") == 50, cut  # remuxed from the units
    imported = run.imported("unseekable.mkv")
    assert imported.returncode == 0, imported.stderr
    (session,) = imported.sessions
    assert session["frames"] == 50 and imported.raw[session["id"]] == data
    assert faces_of(imported.landmarks[session["id"]]) == faces_of(run.live("unseekable.mkv")["clusters"].landmarks)
    out = tmp_path / "export.mp4"
    done = cli("export", session["id"], "--out", str(out), "--overlay", "none", "--data", str(imported.data))
    assert done.returncode == 0, stderr_lines(done.stderr)
    assert ffprobe(out)["frames"] == 50


def test_audio_only_is_a_session_without_video(run):
    imported = run.imported("opus_only.webm")
    assert imported.returncode == 0 and imported.stdout.splitlines()[-1].endswith(": 0 frames, faces in 0")
    for live in run.live("opus_only.webm").values():
        assert live.summary["video"] is None and live.summary["frames"] == 0
        assert live.summary["duration_ms"] > 1900  # the audio's own times (2 s of Opus)


# -- refusals -----------------------------------------------------------------------------------------------
def test_unknown_codec_is_refused_naming_its_codec_id(run):
    for cut, live in run.live("writer_unknown_codec.mkv").items():
        assert (live.refused_seq, live.refused) == (0, {"code": "unsupported", "message": UNKNOWN_CODEC}), cut
        assert (live.summary["state"], live.summary["error"], live.summary["chunks"]) == ("failed", UNKNOWN_CODEC, 0)
        assert live.raw == b"" and live.summary["frames"] == 0
    imported = run.imported("writer_unknown_codec.mkv")
    assert imported.returncode == 1 and imported.sessions == []
    assert imported.stderr[-1] == f"camingest import: writer_unknown_codec.mkv: {UNKNOWN_CODEC}"


def block_end(data: bytes, offset: int) -> int:
    _, n = vint(data, offset, True)
    size, m = vint(data, offset + n, False)
    return offset + n + m + size


def test_damaged_frame_headers_are_refused_at_their_chunk(run, tmp_path):
    data = (CORPUS / "writer_corrupt_vp8.webm").read_bytes()
    for cut, live in run.live("writer_corrupt_vp8.webm").items():
        # refused is the chunk that completes the block at byte 4516; the ones before are acked
        assert live.refused == {"code": "invalid_media", "message": CORRUPT_VP8}, cut
        acked = b"".join(live.acked)
        assert len(acked) < block_end(data, 4516) <= len(acked) + len(live.pieces[live.refused_seq]), cut
        assert live.raw == acked == data[: len(acked)], cut
        summary = live.summary
        assert (summary["state"], summary["error"], summary["chunks"]) == ("failed", CORRUPT_VP8, live.refused_seq)
        assert summary["frames"] == ffprobe_bytes(acked, tmp_path, f"{cut}.webm"), cut
    imported = run.imported("writer_corrupt_vp8.webm")
    assert imported.returncode == 1 and imported.sessions == []
    assert imported.stderr[-1] == f"camingest import: writer_corrupt_vp8.webm: {CORRUPT_VP8}"


def test_a_video_that_does_not_decode_fails_the_same_way_everywhere(run):
    for cut, live in run.live("undecodable.webm").items():
        summary = live.summary
        assert (summary["state"], summary["error"], summary["frames"]) == ("failed", UNDECODABLE, 3), cut
        assert "landmarks_error" not in summary, cut
        assert live.events["session_error"] == [{"session_id": live.id, "code": "invalid_media", "message": UNDECODABLE}]
        assert live.raw == b"".join(live.acked), cut
        if live.refused is not None:  # a chunk sent after the worker found it
            assert live.refused == {"code": "invalid_media", "message": f"session {live.id} failed: {UNDECODABLE}"}
    imported = run.imported("undecodable.webm")  # stored, then its reprocess finds it: a failed session saying why
    assert imported.returncode == 1
    (session,) = imported.sessions
    assert (session["state"], session["error"], session["frames"]) == ("failed", UNDECODABLE, 3)
    assert f"{session['id']}: failed, its landmarks are kept: {UNDECODABLE}" in imported.stderr
    assert imported.stderr[-1] == f"camingest reprocess: 1 of 1 sessions failed ({session['id']}); 0 reprocessed"


def worker_rss(server: ServerProcess) -> int:
    """Resident bytes of the server's child processes (its analysis workers)."""
    assert server.proc is not None
    children: list[str] = []
    for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
        children += (task / "children").read_text().split()
    total = 0
    for pid in children:
        status = Path(f"/proc/{pid}/status").read_text()
        total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024
    return total


def test_a_frame_size_bomb_is_refused_before_any_decoder_sees_it(run):
    """Issue #25: one chunk of three VP8 keyframes declaring 16000x16000 took a worker from 241 MB
    to 7.4 GB. Refused at the chunk now; the workers' memory stays where it was (measured after
    an honest session's landmarks, which come after)."""
    data = bomb()
    before = worker_rss(run.server)

    async def scenario() -> tuple[dict[str, Any], str]:
        async with Client(run.server.url) as client:
            session = await client.start("video/webm")
            ack = await client.chunk(session, 0, data)
            honest = await client.start("video/webm")
            await client.send_all(honest, [(CORPUS / "vp8_opus.webm").read_bytes()])
            await client.stop(honest)
            await wait_until(lambda: _landmarked(run.server.url, honest["session_id"], 50), "honest landmarks")
            return ack, session["session_id"]

    ack, session_id = asyncio.run(scenario())
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_media"
    message = ack["error"]["message"]
    assert message.startswith("the video's VP8 keyframe at byte ") and message.endswith(
        f" declares 16000x16000 pixels (256,000,000); {LIMIT_TEXT}"
    )
    after = worker_rss(run.server)
    print(f"analysis workers' RSS: {before / 2**20:.0f} MiB before, {after / 2**20:.0f} MiB after the bomb")
    assert after - before < 64 * 2**20
    _, summary = asyncio.run(http_json(f"{run.server.url}/api/sessions/{session_id}"))
    assert (summary["state"], summary["error"], summary["bytes"]) == ("failed", message, 0)
    imported = run.imported("bomb.webm")
    assert imported.returncode == 1 and imported.sessions == []
    assert imported.stderr[-1] == f"camingest import: bomb.webm: {message}"


async def _landmarked(url: str, session_id: str, frames: int) -> bool:
    _, summary = await http_json(f"{url}/api/sessions/{session_id}")
    return summary["analysed_frames"] == frames and summary["skipped_frames"] == 0


def test_uploads_apply_the_same_rule(run):
    """POST /api/sessions is the import of a browser: the same refusals, the same frames."""
    live = run.live("writer_tracks_after_clusters.mkv")["clusters"].landmarks

    async def upload(name: str) -> tuple[int, dict[str, Any]]:
        import aiohttp

        async with aiohttp.ClientSession() as http, http.post(
            f"{run.server.url}/api/sessions?filename={name}", data=run.files[name].read_bytes()
        ) as response:
            return response.status, await response.json()

    async def scenario() -> None:
        _, before = await http_json(f"{run.server.url}/api/sessions")
        assert await upload("writer_unknown_codec.mkv") == (
            415, {"error": {"code": "unsupported", "message": f"writer_unknown_codec.mkv: {UNKNOWN_CODEC}"}}
        )
        status, body = await upload("bomb.webm")
        assert status == 422 and body["error"]["message"].startswith("bomb.webm: the video's VP8 keyframe at byte ")
        _, after = await http_json(f"{run.server.url}/api/sessions")
        assert len(after["sessions"]) == len(before["sessions"])  # a refused upload leaves no session
        status, created = await upload("writer_tracks_after_clusters.mkv")
        assert status == 201 and (created["frames"], created["video"]["codec"]) == (50, "vp8")
        base = f"{run.server.url}/api/sessions/{created['id']}"
        summary = await wait_for_summary(base, settled, "the upload is landmarked")
        assert (summary["analysed_frames"], summary["skipped_frames"], summary["finalized"]) == (50, 0, True)
        _, body = await http_json(base + "/landmarks")
        assert faces_of(body["frames"]) == faces_of(live)

    asyncio.run(scenario())


# -- reprocess: last, over every live session of the valid files --------------------------------------------
def test_reprocess_equals_live_frame_for_frame(run):
    names = [name for name in VALID_FILES if name in LIVE_FILES] + ["unseekable.mkv"]
    sessions = [live for name in names for live in run.live(name).values()]
    filled = [live for live in sessions if live.events.get("landmarks_filled")]
    print(f"{len(filled)} of {len(sessions)} live sessions had frames skipped live and filled after stop")
    assert filled, "some sessions were filled: their frames too must be the live ones"
    done = cli("reprocess", *(live.id for live in sessions), "--data", str(run.server.data), "--workers", "1")
    assert done.returncode == 0, stderr_lines(done.stderr)

    async def reprocessed(live: Live) -> list[dict[str, Any]]:
        _, body = await http_json(f"{run.server.url}/api/sessions/{live.id}/landmarks")
        return body["frames"]

    for live in sessions:
        assert faces_of(asyncio.run(reprocessed(live))) == faces_of(live.landmarks), live.summary["meta"]
