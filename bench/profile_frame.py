"""Where a frame's time goes, step by step, live and batch (issue 21, item 1).

    python3 bench/profile_frame.py [--seconds 45] [--code DIR] [--identify]

Runs, in this one process and on one core, what a frame costs on each path, with a timer
around every step (the process's CPU time: the machine is shared, and CPU time is what its
neighbours disturb least; ``--wall`` for wall time); a step's figure is its own time (the steps it calls are counted under their
own names), so the rows add up to the measured total, and what no timer covers is printed as
"unaccounted".

- live: a 45 s 640x480 VP8 session (bench/common.py ``long_recording``, cut into 250 ms blobs)
  as the server and one worker process handle it: the server's reader turns each blob into a
  standalone unit; the worker (``ingest.live.worker.Worker``, unchanged) opens it, decodes,
  tracks and builds its reply; the reply crosses a real ``multiprocessing`` pipe (pickled, sent,
  received, unpickled); the server appends it to landmarks.jsonl through a real SessionStore
  (JSON, the file write, the index's counters) and encodes the Socket.IO packet that carries it
  to the page (python-socketio's and engine.io's encoders, as ``sio.emit`` does).
- batch: the same stream stored as a session's raw stream, cut into jobs as ``camingest
  reprocess`` does; each job is read, decoded and tracked (``ingest.batch.jobs.landmark_runs``),
  its result pickled and unpickled (the pool's way back) and written as ``LandmarkRewrite`` does.

``--code DIR`` profiles another checkout's code (e.g. the commit before, for before/after); the
steps it does not have are simply not there. CPU time of other threads (the index's commits)
is printed beside the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import importlib.util
import json
import os
import pickle
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent


def _common() -> Any:
    spec = importlib.util.spec_from_file_location("bench_common", HERE / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLOCK = time.process_time  # CPU time of the process (all its threads): what a frame costs the
# machine, whatever else runs on the cores meanwhile (--wall: time.perf_counter)


class Profile:
    """Exclusive (self) time per label: a label's time excludes its children's."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[Any]] = []
        self._patched: list[tuple[Any, str, Any]] = []

    def enter(self, label: str) -> None:
        self._stack.append([label, CLOCK(), 0.0])

    def exit(self) -> None:
        label, start, children = self._stack.pop()
        elapsed = CLOCK() - start
        self.totals[label] += elapsed - children
        self.calls[label] += 1
        if self._stack:
            self._stack[-1][2] += elapsed

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.enter(label)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()

        return timed

    def wrap_generator(self, label: str, fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        """Each ``next`` of the generator timed (the consumer's work between them is not)."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            gen = fn(*args, **kwargs)
            while True:
                self.enter(label)
                try:
                    item = next(gen)
                except StopIteration:
                    return
                finally:
                    self.exit()
                yield item

        return timed

    def patch(self, owner: Any, name: str, label: str, generator: bool = False) -> None:
        fn = getattr(owner, name, None)
        if fn is None:
            return  # that code has no such step
        own = vars(owner)
        self._patched.append((owner, name, own.get(name, None)))
        setattr(owner, name, (self.wrap_generator if generator else self.wrap)(label, fn))

    def restore(self) -> None:
        for owner, name, original in reversed(self._patched):
            if original is None:  # was the class's: the instance's wrapper goes
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._patched.clear()

    def timed(self, label: str) -> Any:
        profile = self

        class _Timed:
            def __enter__(self) -> None:
                profile.enter(label)

            def __exit__(self, *exc: object) -> None:
                profile.exit()

        return _Timed()


def instrument(profile: Profile) -> None:
    """Timers around every step of the per-frame path (this process's modules, whatever code)."""
    import av

    import ingest.analysis.detect as detect
    import ingest.analysis.tracker as tracker
    import ingest.batch.jobs as jobs
    import ingest.live.worker as worker
    import storage.landmarks as landmarks
    from ingest.analysis.engine.predictor import predictor
    from ingest.media import decode, webm

    profile.patch(av, "open", "decode: container open per unit")
    profile.patch(decode.UnitDecoder, "decode", "decode: demux + VP8 decode", generator=True)
    profile.patch(decode.UnitDecoder, "flush", "decode: demux + VP8 decode", generator=True)
    profile.patch(decode.DecodedFrame, "gray", "decode: gray plane (a view)")
    profile.patch(decode.DecodedFrame, "rgb", "identify: rgb conversion")
    for name in ("_decode_blocks", "decode_blocks", "_packets"):  # later code's packet path
        profile.patch(decode.UnitDecoder, name, "decode: demux + VP8 decode", generator=True)
    profile.patch(tracker.FaceTracker, "process", "tracker: bookkeeping")
    profile.patch(tracker.FaceTracker, "_scene_cut", "tracker: scene-cut thumbnail")
    profile.patch(tracker.FaceTracker, "_sweep", "detection: sweep (full frame, upsample 1)")
    profile.patch(tracker.FaceTracker, "_quick", "detection: sweep, quick pass (half size)")
    profile.patch(tracker.FaceTracker, "_slice", "detection: sweep slice (one tile, 2x)")
    profile.patch(tracker.FaceTracker, "_refresh", "detection: refresh (half size)")
    profile.patch(tracker.FaceTracker, "_identify", "identify: descriptors")
    profile.patch(tracker.FaceTracker, "_faces", "results: faces as lists/dicts")
    profile.patch(tracker, "detect_near", "detection: crop searches (anchors, lost faces)")
    profile.patch(detect, "detect_near", "detection: crop searches (anchors, lost faces)")
    profile.patch(type(predictor("numba")), "fit", "68-point fit (numba kernel)")
    for module in (worker, jobs):
        profile.patch(module, "frame_result", "results: frame dicts")
        profile.patch(module, "frame_record", "results: frame dicts")
    profile.patch(webm.WebMReader, "feed", "server: blob -> unit (reader)")
    profile.patch(landmarks, "frame_lines", "landmarks.jsonl: JSON encode")
    if hasattr(landmarks, "EncodedFrames"):
        profile.patch(landmarks.EncodedFrames, "encode", "landmarks.jsonl: JSON encode")


def live(profile: Profile, blobs: list[bytes], data: Path, identify: bool) -> int:
    import multiprocessing

    import engineio.packet
    import socketio.packet

    from ingest.analysis.tracker import TrackerSettings
    from ingest.live.messages import AnalyseUnit, Flush
    from ingest.live.pipeline import LivePipeline
    from ingest.live.worker import Worker
    from ingest.media.webm import WebMReader, build_unit
    from ingest.metrics import Metrics
    from storage.store import SessionStore

    profile.enter("set-up: store, worker, event loop (once)")
    store = SessionStore(data)
    store.open(recover=False)
    row, _ = store.create("video/webm;codecs=vp8", {})
    session_id = row["id"]
    loop = asyncio.new_event_loop()
    profile.patch(store, "append_landmarks", "server: append landmarks + index counters")

    async def emit(event: str, data: dict[str, Any], room: str) -> None:
        """What sio.emit encodes (python-socketio's and engine.io's packets), once per event."""
        with profile.timed("server: Socket.IO packet encode (emit)"):
            message = socketio.packet.Packet(socketio.packet.EVENT, data=[event, data], namespace="/").encode()
            engineio.packet.Packet(engineio.packet.MESSAGE, data=message).encode()

    # the server's delivery of a reply (LivePipeline._deliver) run as it is, on a stand-in for
    # the pipeline holding what it uses: the store, the metrics, the emit
    server = SimpleNamespace(store=store, metrics=Metrics(), emit=emit, _dispatch=lambda pipe: None)
    pipe = SimpleNamespace(session_id=session_id, skipped=0, acked_at={}, in_flight=True)
    deliver = LivePipeline._deliver
    settings = TrackerSettings(identify=identify)
    worker = Worker(settings, 1)
    worker_end, server_end = multiprocessing.Pipe()
    reader = WebMReader()
    frames = 0
    requests: list[Any] = []
    profile.exit()
    for seq, blob in enumerate(blobs):
        unit = reader.feed(blob)
        if len(unit):
            with profile.timed("server: blob -> unit (build)"):
                data_unit = build_unit(bytes(reader.init), unit.clusters)
            requests.append(AnalyseUnit(session_id, seq, data_unit, True))
    requests.append(Flush(session_id))
    for request in requests:
        with profile.timed("pipe: request (pickle, send, receive)"):
            server_end.send(request)
            request = worker_end.recv()
        with profile.timed("worker: request dispatch"):
            reply = worker.handle(request)
        with profile.timed("pipe: reply (pickle, send, receive, unpickle)"):
            worker_end.send(reply)
            reply = server_end.recv()
        frames += len(reply.frames)
        with profile.timed("server: deliver (the pipeline's own code)"):
            loop.run_until_complete(deliver(server, pipe, dataclasses.replace(reply, seq=max(reply.seq, 0))))
    with profile.timed("set-up: store, worker, event loop (once)"):
        loop.close()
        store.close()
    return frames


def batch(profile: Profile, path: Path, data: Path) -> tuple[int, int]:
    import ingest.batch.jobs as jobs_module
    from ingest.analysis.tracker import TrackerSettings
    from ingest.batch.jobs import plan_jobs, read_runs
    from storage.files import LocalStream
    from storage.landmarks import LandmarkRewrite

    source = LocalStream(str(path), path.stat().st_size)
    with profile.timed("batch: plan jobs (scan the stream)"):
        jobs = plan_jobs(source, TrackerSettings(), None)
    frames = decoded = 0
    target = data / "landmarks.jsonl"
    with LandmarkRewrite(target) as rewrite:
        for job in jobs:
            with profile.timed("batch: read the job's blocks"):
                runs = read_runs(job)
            with profile.timed("batch: job loop (unit, set-up)"):
                # what a pool worker runs (later code encodes the results there)
                result = getattr(jobs_module, "landmark_runs_encoded", jobs_module.landmark_runs)(job, runs)
            with profile.timed("pool: result pickle + unpickle"):
                result = pickle.loads(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
            with profile.timed("batch: write results"):
                rewrite.write(result)
            frames += job.end - job.start
            decoded += job.end - job.first_index if job.first_index < job.start else job.end - job.start
        with profile.timed("batch: commit (fsync, rename)"):
            rewrite.commit()
    return frames, decoded


def report(name: str, profile: Profile, frames: int, wall: float, cpu: float) -> dict[str, Any]:
    per_frame = {label: total * 1000 / frames for label, total in profile.totals.items()}
    accounted = sum(per_frame.values())
    total = wall * 1000 / frames
    rows = sorted(per_frame.items(), key=lambda kv: -kv[1])
    clock = "wall" if CLOCK is time.perf_counter else "CPU"
    print(f"\n## {name}: {frames} frames, {total:.2f} ms/frame {clock} ({1000 / total:.0f} frames/s on one core), "
          f"process CPU {cpu * 1000 / frames:.2f} ms/frame (all threads)")  # fmt: skip
    print("| step | ms/frame | share | calls |")
    print("| --- | ---: | ---: | ---: |")
    for label, ms in rows:
        print(f"| {label} | {ms:.3f} | {ms / total:.0%} | {profile.calls[label]} |")
    print(f"| unaccounted (loops, timers) | {total - accounted:.3f} | {(total - accounted) / total:.0%} | |")
    return {"path": name, "frames": frames, "ms_per_frame": total, "cpu_ms_per_frame": cpu * 1000 / frames,
            "steps": per_frame, "calls": dict(profile.calls)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=45)
    parser.add_argument("--code", type=Path, default=HERE.parent, help="the checkout whose code is profiled")
    parser.add_argument("--identify", action="store_true", help="live: a gallery of one person (descriptors)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--wall", action="store_true", help="wall time instead of the process's CPU time")
    args = parser.parse_args()
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter
    common = _common()
    path = common.long_recording(args.seconds)
    blobs, _ = common.blobs_of(path)
    sys.path.insert(0, str(args.code.resolve()))
    if args.json:
        args.json = args.json.resolve()  # where it was asked for, not inside --code
    os.chdir(args.code)
    import cv2

    cv2.setNumThreads(1)
    from ingest.analysis.process import prepare_analysis_process

    prepare_analysis_process("numba")
    print(f"# {common.machine_notes()}; load average {os.getloadavg()[0]:.2f} before; code {args.code.resolve()}")
    git = os.popen(f"git -C {args.code} log -1 --format=%h%x20%s 2>/dev/null").read().strip()
    print(f"# commit {git}; {path.name}, {len(blobs)} blobs")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("live", "batch"):
            profile = Profile()
            instrument(profile)
            wall0, cpu0 = CLOCK(), time.process_time()
            if name == "live":
                frames = live(profile, blobs, Path(tmp) / "live", args.identify)
                extra = ""
            else:
                frames, decoded = batch(profile, path, Path(tmp))
                extra = f" ({decoded} decoded)"
            wall, cpu = CLOCK() - wall0, time.process_time() - cpu0
            results.append(report(name + extra, profile, frames, wall, cpu))
            profile.restore()
    print(f"\n# load average {os.getloadavg()[0]:.2f} after")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
