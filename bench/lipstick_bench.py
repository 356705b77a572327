"""The lipstick try-on tutorial's pages at their pace, beside live recordings on the same workers.

    python bench/lipstick_bench.py --pages 10 30 --live 4 --seconds 20

One ``camingest serve`` (2 workers) per configuration. A try-on page is a python-socketio client
emitting an ``image`` data URL every 1/6 s, as the tutorial's page does: 400x300 JPEGs (quality
50, like ``toDataURL('image/jpeg', 0.5)``) of the face camera the page tests use (obama.jpg
through the fixture recorder's make_camera.py), each frame 392-415 px wide so that its answer
is told apart by its JPEG header (nothing is decoded here). Latency: emit to ``response_back``;
dropped: images sent and never answered (latest wins), and the server's
``camingest_classic_frames_dropped_total``. A live recording replays the 640x480 VP8 fixture at
its recorded pace (start, chunks, stop, again): landmark lag from capture to the client, and
frames skipped. Configurations side by side: live alone, pages alone, pages + live.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import socketio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import FIXTURES, IMAGES, RECORDINGS, LandmarkTally, chunks_of, machine_notes, percentile, start_server
from ingest.media.image_headers import probe_image

FPS = 6
WIDTHS = list(range(392, 416))  # one per frame of a cycle: the answer's width says which frame it is
LIVE = "webcam_vp8_opus_250ms"


def camera_frames(folder: Path) -> list[str]:
    """The face camera's frames as the tutorial's page would send them (data URLs)."""
    y4m = folder / "face.y4m"
    tool = FIXTURES / "tools" / "make_camera.py"
    subprocess.run([sys.executable, str(tool), str(IMAGES / "obama.jpg"), str(y4m),
                    "640", "480", "4"], check=True)  # fmt: skip
    raw = y4m.read_bytes()
    body = raw.index(b"\n") + 1
    size = 640 * 480 * 3 // 2
    urls = []
    for k, width in enumerate(WIDTHS):
        start = body + k * 5 * (size + 6) + 6  # every 5th camera frame (30 fps)
        bgr = cv2.cvtColor(np.frombuffer(raw[start : start + size], np.uint8).reshape(720, 640), cv2.COLOR_YUV2BGR_I420)
        ok, jpeg = cv2.imencode(".jpg", cv2.resize(bgr, (width, 300), interpolation=cv2.INTER_AREA),
                                [cv2.IMWRITE_JPEG_QUALITY, 50])  # fmt: skip
        assert ok
        urls.append("data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode())
    return urls


def answer_width(url: str) -> int:
    head = base64.b64decode(url[len("data:image/jpeg;base64,") :][:4096])
    return probe_image(head).width


async def page(url: str, frames: list[str], deadline: float, stats: dict) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    sent: dict[int, list[tuple[int, float]]] = {w: [] for w in WIDTHS}  # width -> (seq, emitted at)
    last = -1

    @sio.on("response_back")
    async def on_answer(data: str) -> None:
        nonlocal last
        now = time.monotonic()
        width = answer_width(data)
        seq, emitted = next((s, t) for s, t in reversed(sent[width]) if s > last)
        last = seq
        stats["latencies"].append((now - emitted) * 1000)
        stats["answered"] += 1

    @sio.on("session_error")
    async def on_error(data: dict) -> None:
        stats["errors"].append(data["code"])

    await sio.connect(url, transports=["websocket"])
    await asyncio.sleep(random.random() / FPS)  # pages do not tick together
    seq, due = 0, time.monotonic()
    while time.monotonic() < deadline:
        k = seq % len(frames)
        sent[WIDTHS[k]].append((seq, time.monotonic()))
        await sio.emit("image", frames[k])
        stats["sent"] += 1
        seq += 1
        due += 1 / FPS
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    await asyncio.sleep(2)  # the last answers
    stats["unanswered_at_end"] += 0 if last == seq - 1 else 1
    await sio.disconnect()


async def recorder(url: str, deadline: float, tally: LandmarkTally) -> None:
    """A live recording at the fixture's own pace, again and again until the deadline."""
    chunks = chunks_of(LIVE)
    times = json.loads((RECORDINGS / LIVE / "meta.json").read_text())["times"]
    sio = socketio.AsyncClient(reconnection=False)
    t0 = 0.0
    tally.listen(sio, lambda: t0)

    await sio.connect(url, transports=["websocket"])
    await asyncio.sleep(random.random() * 0.25)
    while time.monotonic() < deadline:
        ack = await sio.call("start", {"mime": "video/webm;codecs=vp8"})
        session = {"session_id": ack["session_id"], "token": ack["token"]}
        t0 = time.monotonic()
        for seq, data in enumerate(chunks):
            await asyncio.sleep(max(0.0, t0 + times[seq][1] / 1000 - time.monotonic()))
            await sio.call("chunk", {**session, "seq": seq, "data": data}, timeout=60)
        await sio.call("stop", session)
    await asyncio.sleep(3)
    await sio.disconnect()


async def server_dropped(url: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        text = await response.text()
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("camingest_classic_frames_dropped_total "))  # fmt: skip


async def configuration(pages: int, live: int, seconds: float, frames: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as data:
        proc, url = start_server(Path(data), "--workers", "2")
        try:
            warm = socketio.AsyncClient(reconnection=False)  # workers started, model loaded
            answered = asyncio.Event()
            warm.on("response_back", lambda _: answered.set())
            await warm.connect(url, transports=["websocket"])
            await warm.emit("image", frames[0])
            await asyncio.wait_for(answered.wait(), 60)
            await warm.disconnect()
            tryon = {"sent": 0, "answered": 0, "latencies": [], "errors": [], "unanswered_at_end": 0}
            rec = LandmarkTally()
            deadline = time.monotonic() + seconds
            await asyncio.gather(*(page(url, frames, deadline, tryon) for _ in range(pages)),
                                 *(recorder(url, deadline, rec) for _ in range(live)))  # fmt: skip
            dropped = await server_dropped(url)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    lat, lags = tryon["latencies"], rec.lags
    return {
        "pages": pages, "live": live, "seconds": seconds,
        "sent": tryon["sent"], "answered": tryon["answered"], "dropped": tryon["sent"] - tryon["answered"],
        "server_dropped": dropped, "errors": len(tryon["errors"]),
        "answers_per_page_s": round(tryon["answered"] / pages / seconds, 2) if pages else None,
        "p50_ms": round(percentile(lat, 50), 1) if lat else None, "p95_ms": round(percentile(lat, 95), 1) if lat else None,
        "live_frames": rec.analysed + rec.skipped, "live_skipped": rec.skipped,
        "live_lag_p50_ms": round(percentile(lags, 50)) if lags else None,
        "live_lag_p95_ms": round(percentile(lags, 95)) if lags else None,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--live", type=int, default=4, help="live recordings beside the pages")
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    print(f"# {machine_notes()}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        frames = camera_frames(Path(folder))
    runs = [(0, args.live)] + [(n, live) for n in args.pages for live in (0, args.live)]
    for pages, live in runs:
        print(json.dumps(asyncio.run(configuration(pages, live, args.seconds, frames))), flush=True)


if __name__ == "__main__":
    main()
