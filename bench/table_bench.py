"""The table of issue 21 on the fixtures, before and after side by side in one run.

    python3 bench/table_bench.py live --sessions 20 30 [--code DIR ...] [--seconds 45]
    python3 bench/table_bench.py batch [--code DIR ...] [--copies 4]
    python3 bench/table_bench.py accuracy [--code DIR ...]
    python3 bench/table_bench.py plot bench/results/table_live.jsonl bench/results/table_lag.png

``--code`` names checkouts to measure (default: this one); with two (e.g. a worktree of the
commit before, and this one) every figure is measured for both, alternating, in the same run,
so the ratio between them is not the machine's mood between two runs. Every figure line
carries the load average (1 min) before and after it. Results are JSON lines on stdout and,
with ``--out``, appended to a file.

- live: N clients (python-socketio, one process on the same 2 cores) each replaying the 45 s
  640x480 VP8 session (bench/common.py ``long_recording``: the webcam fixtures one after
  another, looped, re-encoded as Chrome's VP8) at its pace, 250 ms blobs, all started
  together, into one server with 2 workers; lag = landmarks received minus the frame's
  capture time. Per-frame lags are kept for the plot.
- batch: the 45 s session stored ``--copies`` times, ``Reprocessor`` with 2 warm workers over
  all (one pass, as ``camingest reprocess ID...``); the six short fixtures (6-9 s) the same
  way; decode only on one core and the naive pipeline (OpenCV + HOG upsample 1 + 68 points on
  every frame, 60 frames) on one core, in the same run: the ratios.
- accuracy: recall and median landmark error (over the inter-ocular distance) of the tracker
  at the default settings against per-frame full detection (upsample 1) on the scene fixture
  and the two-person 720p recording, every frame.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROOT,
    LandmarkTally,
    blobs_of,
    chunks_of,
    long_recording,
    machine_notes,
    percentile,
    start_server,
)

MANY_CLIENTS = {"CAMINGEST_MAX_UNAUTHENTICATED_PER_CLIENT": "64"}
SHORT = ["webcam_vp8_opus_250ms", "webcam_vp8_kf1s_250ms", "webcam_vp9_opus_250ms", "webcam_h264_250ms",
         "scene_vp8_opus_250ms", "two_people_720p_vp8"]  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its own threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def family(pid: int) -> dict[str, int]:
    """The server and its worker processes, by role."""
    out = {"server": pid}
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for i, child in enumerate(children):
        out[f"worker{i}"] = int(child)
    return out


def load() -> float:
    return round(os.getloadavg()[0], 2)


def commit_of(code: Path) -> str:
    return subprocess.run(["git", "-C", str(code), "log", "-1", "--format=%h"], capture_output=True, text=True).stdout.strip()


# -- live ------------------------------------------------------------------------------------------


async def live_client(url: str, blobs: list[bytes], due: list[int], start_at: float, tally: LandmarkTally) -> str:
    import socketio

    sio = socketio.AsyncClient(reconnection=False)
    t0 = 0.0
    tally.listen(sio, lambda: t0)

    await sio.connect(url, transports=["websocket"])
    ack = await sio.call("start", {"mime": "video/webm;codecs=vp8"})
    session = {"session_id": ack["session_id"], "token": ack["token"]}
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))  # all together
    t0 = time.monotonic()  # the recording starts now; blob k is due at due[k] ms
    for seq, data in enumerate(blobs):
        await asyncio.sleep(max(0.0, t0 + due[seq] / 1000 - time.monotonic()))
        await sio.call("chunk", {**session, "seq": seq, "data": data}, timeout=60)
    await sio.call("stop", session)
    await asyncio.sleep(3)
    await sio.disconnect()
    return session["session_id"]


async def final_after(url: str, ids: list[str], since: float, limit_s: float = 600) -> float | None:
    """Seconds from ``since`` until every session's landmarks are final (the fill after stop
    gave skipped and provisional frames theirs): its summary's skipped_frames is 0."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        waiting = set(ids)
        while waiting and time.monotonic() - since < limit_s:
            for session_id in list(waiting):
                async with http.get(f"{url}/api/sessions/{session_id}") as response:
                    detail = await response.json()
                if detail.get("state") == "stopped" and detail.get("skipped_frames") == 0 \
                        and detail.get("analysed_frames") == detail.get("frames"):
                    waiting.discard(session_id)
            await asyncio.sleep(0.2)
    return None if waiting else round(time.monotonic() - since, 2)


async def live_run(code: Path, sessions: int, seconds: int, workers: int, identify: bool) -> dict[str, Any]:
    path = long_recording(seconds)
    blobs, due = blobs_of(path)
    frames_each = round(seconds * 30)
    with tempfile.TemporaryDirectory() as data:
        if identify:
            subprocess.run([sys.executable, "-m", "ingest.cli", "gallery", "add", "Obama",
                            str(ROOT / "tests/fixtures/images/obama.jpg"), "--data", data],
                           check=True, capture_output=True, cwd=code)  # fmt: skip
        # N clients on one address connecting at once: more than a stranger may (bounds, #25)
        proc, url = start_server(Path(data), "--workers", str(workers), root=code, env=MANY_CLIENTS)
        try:
            await asyncio.sleep(4)  # the workers load the model and compile nothing (cached)
            before = load()
            pids = family(proc.pid)
            cpu0 = {role: cpu_seconds(pid) for role, pid in pids.items()} | {"clients": time.process_time()}
            wall0 = time.monotonic()
            outs = [LandmarkTally() for _ in range(sessions)]
            start_at = time.monotonic() + 1.0
            ids = await asyncio.gather(*(live_client(url, blobs, due, start_at, o) for o in outs))
            wall = time.monotonic() - wall0
            cpu = {role: cpu_seconds(pid) - cpu0[role] for role, pid in pids.items()}
            cpu["clients"] = time.process_time() - cpu0["clients"]
            # the last stop was 3 s before the clients ended
            final_s = await final_after(url, list(ids), time.monotonic() - 3)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    lags = [round(x, 1) for o in outs for x in o.lags]
    analysed = sum(o.analysed for o in outs)
    return {"what": "live", "code": str(code), "commit": commit_of(code), "sessions": sessions, "workers": workers,
            "identify": identify, "frames": frames_each * sessions, "analysed": analysed,
            "skipped": sum(o.skipped for o in outs), "provisional": sum(o.provisional for o in outs), "named": sum(o.named for o in outs), "analysed_share": round(analysed / (frames_each * sessions), 4),
            "final_after_stop_s": final_s,
            "lag_p50_ms": percentile(lags, 50), "lag_p95_ms": percentile(lags, 95), "lag_max_ms": max(lags or [0]),
            "load_before": before, "load_after": load(),
            "cores_used": {role: round(c / wall, 2) for role, c in cpu.items()},
            "cpu_ms_per_frame": {role: round(c * 1000 / max(analysed, 1), 2) for role, c in cpu.items()},
            "lags": lags, "at": [round(x, 3) for o in outs for x in o.at]}  # fmt: skip


# -- batch -----------------------------------------------------------------------------------------

BATCH_RUNNER = r"""
import json, resource, sys, time
from pathlib import Path
from ingest.analysis.tracker import TrackerSettings
from ingest.batch.local import Reprocessor
from storage.store import SessionStore
data, workers = Path(sys.argv[1]), int(sys.argv[2])
groups = json.loads(sys.argv[3])
store = SessionStore(data)
store.open(recover=False)
out = {}
def cpu(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
main0 = cpu(resource.RUSAGE_SELF)
with Reprocessor(store, TrackerSettings(), workers) as reprocessor:
    warm = groups["warm"][0]
    reprocessor.run(warm, reprocessor.jobs(warm))  # workers have loaded the model
    for name in sys.argv[4].split(","):
        ids = groups[name]
        start = time.perf_counter()
        plan = [(i, reprocessor.jobs(i)) for i in ids]
        frames = sum(r["frames"] for _, r in reprocessor.run_many(plan))
        out[name] = {"frames": frames, "seconds": time.perf_counter() - start}
store.close()
frames = sum(v["frames"] for v in out.values())
out["cpu_ms_per_frame"] = {"main": (cpu(resource.RUSAGE_SELF) - main0) * 1000 / frames,
                           "workers (warm-up included)": cpu(resource.RUSAGE_CHILDREN) * 1000 / frames}
print(json.dumps(out))
"""


async def store_streams(url: str, streams: dict[str, list[list[bytes]]]) -> dict[str, list[str]]:
    from ingest.client import CamingestClient

    ids: dict[str, list[str]] = {}
    async with CamingestClient(url) as client:
        for name, copies in streams.items():
            for chunks in copies:
                session = await client.start()
                await session.send_stream(chunks)
                await session.stop()
                ids.setdefault(name, []).append(session.session_id)
    return ids


def decode_only_fps(chunks: list[bytes]) -> float:
    from tests.media import decoded_frames

    start = time.perf_counter()
    n = sum(1 for _ in decoded_frames(chunks))
    return n / (time.perf_counter() - start)


def batch(codes: list[Path], copies: int, workers: int, seconds: int, rounds: int) -> list[dict[str, Any]]:
    import cv2

    from bench.landmarks_bench import naive_fps

    cv2.setNumThreads(1)
    long_blobs, _ = blobs_of(long_recording(seconds))
    streams = {"warm": [chunks_of("webcam_vp8_opus_250ms")], "long": [long_blobs] * copies,
               "short": [chunks_of(name) for name in SHORT]}  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        proc, url = start_server(data, "--no-analysis")
        try:
            ids = asyncio.run(store_streams(url, streams))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        decode = decode_only_fps(long_blobs)
        naive = naive_fps(long_blobs)
        results.append({"what": "reference", "decode_only_fps_1core": decode, "naive_fps_1core": naive, "load": load()})
        print(json.dumps(results[-1]), flush=True)
        for r in range(rounds):
            for code in codes:
                before = load()
                run = subprocess.run([sys.executable, "-c", BATCH_RUNNER, str(data), str(workers), json.dumps(ids),
                                      "long,short"], capture_output=True, text=True, cwd=code)  # fmt: skip
                if run.returncode:
                    raise RuntimeError(run.stderr)
                out = json.loads(run.stdout.strip().splitlines()[-1])
                cpu = out.pop("cpu_ms_per_frame")
                for name, figures in out.items():
                    fps = figures["frames"] / figures["seconds"]
                    results.append({"what": f"batch {name}", "round": r + 1, "code": str(code), "commit": commit_of(code),
                                    "frames": figures["frames"], "fps": round(fps, 1),
                                    "x_naive": round(fps / naive, 1), "x_decode_2cores": round(fps / (2 * decode), 3),
                                    "cpu_ms_per_frame_both": {k: round(v, 2) for k, v in cpu.items()},
                                    "load_before": before, "load_after": load()})  # fmt: skip
                    print(json.dumps(results[-1]), flush=True)
    return results


# -- accuracy --------------------------------------------------------------------------------------

ACCURACY_RUNNER = r"""
import json, sys
import numpy as np
from ingest.analysis.detect import detect_faces
from ingest.analysis.tracker import FaceTracker, TrackerSettings
from tests.conftest import load_recording
from tests.media import decoded_frames, match_faces
out = {}
for name in ("scene_vp8_opus_250ms", "two_people_720p_vp8"):
    tracker = FaceTracker(TrackerSettings())
    errors = []
    for frame in decoded_frames(load_recording(name).chunks):
        gray = np.ascontiguousarray(frame.gray())
        found = tracker.process(gray, frame.index)
        errors += match_faces(detect_faces(gray, 1), found)
    hits = [e for e in errors if e is not None]
    out[name] = {"faces": len(errors), "recall": len(hits) / len(errors), "median_error_iod": float(np.median(hits)),
                 "sweeps": tracker.sweeps}
print(json.dumps(out))
"""


def accuracy(codes: list[Path]) -> list[dict[str, Any]]:
    results = []
    for code in codes:
        run = subprocess.run([sys.executable, "-c", ACCURACY_RUNNER], capture_output=True, text=True, cwd=code)
        if run.returncode:
            raise RuntimeError(run.stderr)
        results.append({"what": "accuracy", "code": str(code), "commit": commit_of(code),
                        **json.loads(run.stdout.strip().splitlines()[-1])})  # fmt: skip
        print(json.dumps(results[-1]), flush=True)
    return results


# -- plot ------------------------------------------------------------------------------------------


def plot(source: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = [json.loads(line) for line in source.read_text().splitlines() if line.startswith('{"what": "live"')]
    fig, (hist, over) = plt.subplots(1, 2, figsize=(12, 4.4))
    seen: dict[str, int] = {}
    for run in runs:
        label = f"{run['sessions']} sessions, {run.get('label') or run['commit']}"
        seen[label] = seen.get(label, 0) + 1
        label += f", run {seen[label]} (load {run['load_before']})"
        lags = np.array(run["lags"]) / 1000
        if not len(lags):
            continue
        ordered = np.sort(lags)
        hist.plot(ordered, np.arange(1, len(ordered) + 1) / (run["frames"]), label=label)
        at = np.array(run["at"])
        bins = np.arange(0, at.max() + 1, 1.0)
        idx = np.digitize(at, bins)
        p95 = [np.percentile(lags[idx == i], 95) if (idx == i).any() else np.nan for i in range(1, len(bins) + 1)]
        over.plot(bins, p95, label=label)
    hist.set_xlabel("lag, capture to landmarks at the page (s)")
    hist.set_ylabel("share of all frames landmarked by then")
    hist.set_xlim(0, 3)
    hist.axvline(0.6, color="grey", lw=0.8, ls=":")
    hist.axvline(0.7, color="grey", lw=0.8, ls="--")
    hist.grid(alpha=0.3)
    hist.legend(fontsize=7)
    over.set_xlabel("capture time in the session (s)")
    over.set_ylabel("lag p95 within each second (s)")
    over.set_yscale("log")
    over.grid(alpha=0.3)
    over.legend(fontsize=7)
    fig.suptitle("live: real-time 640x480 VP8 sessions started together, one server, 2 workers, 2 cores")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    lv = sub.add_parser("live")
    lv.add_argument("--sessions", type=int, nargs="+", default=[20, 30])
    lv.add_argument("--identify", nargs="+", default=["off"], choices=["off", "on"])
    b = sub.add_parser("batch")
    b.add_argument("--copies", type=int, default=4)
    b.add_argument("--rounds", type=int, default=1)
    sub.add_parser("accuracy")
    for p in (lv, b, sub.choices["accuracy"]):
        p.add_argument("--code", type=Path, nargs="+", default=[ROOT])
        p.add_argument("--label", nargs="+", help="a name per --code (else its commit)")
        p.add_argument("--seconds", type=int, default=45)
        p.add_argument("--workers", type=int, default=2)
        p.add_argument("--out", type=Path, help="append the JSON lines here")
    pl = sub.add_parser("plot")
    pl.add_argument("source", type=Path)
    pl.add_argument("png", type=Path)
    args = parser.parse_args()
    if args.what == "plot":
        plot(args.source, args.png)
        return
    codes = [c.resolve() for c in args.code]
    labels = dict(zip(codes, args.label or [], strict=False))
    print(f"# {machine_notes()}; load average {load()}", flush=True)
    if args.what == "live":
        results = []
        for n in args.sessions:
            for code in codes:
                for identify in args.identify:
                    result = asyncio.run(live_run(code, n, args.seconds, args.workers, identify == "on"))
                    result["label"] = labels.get(code, result["commit"])
                    results.append(result)
                    print(json.dumps({k: v for k, v in result.items() if k not in ("lags", "at")}), flush=True)
    elif args.what == "batch":
        results = batch(codes, args.copies, args.workers, args.seconds, args.rounds)
    else:
        results = accuracy(codes)
    if args.out:
        with open(args.out, "a") as f:
            for result in results:
                result.setdefault("label", labels.get(Path(result.get("code", "")), result.get("commit")))
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
