"""When detection runs and what it finds. Small faces found at the default detection settings:
recall against per-frame full detection at upsample 1 (the expensive reference) on the scene
fixture (cuts, faces from 36 px) and on a 720p recording of two people at different distances
(faces of ~230 and ~55 px), with the first periodic sweep where a session's own sweep offset
may put it. And the sweep schedule of a session: batch jobs start on its sweeps and give what
one tracker over the whole stream gives, frame for frame."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from ingest.analysis.budget import SweepBudget, TimeBudget
from ingest.analysis.detect import detect_faces
from ingest.analysis.tracker import FaceTracker, TrackerSettings
from ingest.batch.jobs import landmark_runs, landmark_runs_encoded, plan_jobs, read_runs
from storage.files import LocalStream
from storage.landmarks import LandmarkCounts, LandmarkRewrite, frame_lines, frame_result
from tests.conftest import load_recording
from tests.media import decoded_frames, match_faces


@functools.cache
def reference(name: str, every: int) -> tuple[list[np.ndarray], dict[int, list[dict]]]:
    """The fixture's gray frames, and full detection (upsample 1) on every ``every``-th."""
    frames = [np.ascontiguousarray(f.gray()) for f in decoded_frames(load_recording(name).chunks)]
    return frames, {i: detect_faces(g, 1) for i, g in enumerate(frames) if i % every == 0}


# sweep_offset -150: the first periodic sweep on frame 150, inside both recordings
@pytest.mark.parametrize("offset", [0, -150])
@pytest.mark.parametrize(("name", "every"), [("scene_vp8_opus_250ms", 1), ("two_people_720p_vp8", 3)])
def test_recall_at_default_settings(name, every, offset):
    tracker = FaceTracker(TrackerSettings(sweep_offset=offset))
    frames, references = reference(name, every)
    errors: list[float | None] = []
    for index, gray in enumerate(frames):
        found = tracker.process(gray, index)
        if index in references:
            errors += match_faces(references[index], found)
    hits = [e for e in errors if e is not None]
    print(f"{name}, sweep_offset {offset}: recall {len(hits)}/{len(errors)}, median error {np.median(hits):.4f}")
    assert len(errors) >= 60
    # measured: scene 170/176 (0.966), 720p 120/120
    assert len(hits) / len(errors) >= (0.96 if name.startswith("scene") else 0.99), f"recall {len(hits)}/{len(errors)}"
    assert float(np.median(hits)) <= 0.05
    # cheap: full-frame sweeps only on the first frame, every 300 frames and at the scene cuts
    assert tracker.sweeps <= 6


def test_both_people_are_found_in_the_720p_recording():
    tracker = FaceTracker(TrackerSettings())
    sizes = []
    for frame in decoded_frames(load_recording("two_people_720p_vp8").chunks):
        faces = tracker.process(np.ascontiguousarray(frame.gray()), frame.index)
        sizes.append(sorted(f["box"][2] for f in faces))
    assert len(sizes) == load_recording("two_people_720p_vp8").expected["video_frames"] == 180
    two = [s for s in sizes if len(s) == 2]
    assert len(two) >= 0.95 * len(sizes)
    # one far (small) and one near (large) face
    assert all(s[0] < 80 and s[1] > 180 for s in two)


def test_a_sessions_sweep_offset_is_its_own_and_stable():
    settings = TrackerSettings()
    offsets = {settings.for_session(f"20261201-120000-{i:08x}").sweep_offset for i in range(200)}
    assert min(offsets) >= -150 and max(offsets) < 150 and len(offsets) > 100  # spread over the period
    session = "20261201-120000-0badcafe"
    assert settings.for_session(session) == settings.for_session(session)  # live, fill and reprocess agree
    assert TrackerSettings(sweep_offset=-150).sweeps_on(150) and not TrackerSettings().sweeps_on(150)
    assert [p for p in range(1000) if TrackerSettings(sweep_offset=17).sweeps_on(p)] == [0, 317, 617, 917]
    with pytest.raises(ValueError, match="sweep_offset"):
        TrackerSettings(sweep_offset=150)


def test_jobs_start_on_the_sessions_sweeps_and_equal_one_tracker(tmp_path):
    """Batch == live with a sweep offset: the jobs of a stream start on its sweeps (0, then
    k x sweep_every + offset), and their results are those of one tracker fed every frame;
    encoded in the worker (what the local pool sends back), they are the live frames' lines,
    and the file written from them is the one written from the frames."""
    recording = load_recording("webcam_vp8_kf1s_250ms")  # 179 frames, a keyframe every 30
    path = tmp_path / "stream.webm"
    path.write_bytes(b"".join(recording.chunks))
    settings = TrackerSettings(detect_every=30, sweep_every=60, sweep_offset=-13)  # sweeps 0, 47, 107, 167
    jobs = plan_jobs(LocalStream(str(path), path.stat().st_size), settings, None, max_frames=60)
    assert [(j.start, j.end) for j in jobs] == [(0, 47), (47, 107), (107, 167), (167, 179)]
    batch = [frame for job in jobs for frame in landmark_runs(job, read_runs(job))]
    tracker = FaceTracker(settings)
    live = [frame_result(f.index, f.pts_ms, tracker.process(f.gray(), f.index)) for f in decoded_frames(recording.chunks)]
    assert tracker.sweeps == 4  # the four, no scene cut
    assert len(batch) == len(live) == 179
    assert sum(bool(f["faces"]) for f in live) >= 170
    assert batch == live
    encoded = [landmark_runs_encoded(job, read_runs(job)) for job in jobs]
    assert [(e.first, e.last) for e in encoded] == [(0, 46), (47, 106), (107, 166), (167, 178)]
    assert b"".join(e.lines for e in encoded) == frame_lines(live).encode()
    assert sum(e.counts.with_faces for e in encoded) == LandmarkCounts.of(live).with_faces
    files = {}
    for name, results in (("frames", [live[j.start : j.end] for j in jobs]), ("encoded", encoded)):
        target = tmp_path / f"{name}.jsonl"
        target.write_bytes(frame_lines([frame_result(i, 0.0, None) for i in range(179)]).encode())  # all skipped
        with LandmarkRewrite(target) as rewrite:
            for result in results:
                rewrite.write(result)
            files[name] = (rewrite.commit(), target.read_bytes())
    assert files["encoded"] == files["frames"]
    assert files["encoded"][0] == LandmarkCounts.of(live)


def test_a_sweep_the_budget_puts_off_gives_provisional_frames_until_a_sweep_on_time():
    """A live worker's sweep budget (analysis/budget.py) empty on frame 0: a quick pass (half
    size) finds the large face at once, the sweep is owed and done on the first frame the budget
    allows, and every frame is provisional until the next sweep on time (frame 60 here), from
    which on the results are those of the tracker that swept on time (batch's)."""
    recording = load_recording("webcam_vp8_kf1s_250ms")  # 179 frames, one face of ~200 px
    frames = list(decoded_frames(recording.chunks))
    settings = TrackerSettings(detect_every=30, sweep_every=60)  # sweeps on 0, 60, 120
    on_time = FaceTracker(settings)
    batch = [frame_result(f.index, f.pts_ms, on_time.process(f.gray(), f.index)) for f in frames]
    # a worker others wait for, with nothing in its budget
    late = FaceTracker(settings, sweep_budget=SweepBudget(share=1.0, burst_s=0.0, waiting=lambda: True))
    live = []
    for f in frames:
        if f.index == 10:
            late.sweep_budget = None  # time again: the owed sweep is done on this frame
        faces = late.process(f.gray(), f.index)
        live.append(frame_result(f.index, f.pts_ms, faces, late.provisional))
    assert late.quick_passes == 1 and late.sweeps == 3  # the owed one on frame 10, then 60 and 120 on time
    assert [bool(r.get("provisional")) for r in live] == [True] * 60 + [False] * 119
    assert all(live[i]["faces"] for i in range(10)), "the quick pass found the face on the first frame"
    assert live[60:] == batch[60:]
    assert LandmarkCounts.of(live).skipped == 60  # what the fill after stop replaces
    stored = frame_lines(live[:2]).encode().splitlines()
    assert stored[0].startswith(b'{"index":0,') and stored[0].endswith(b',"provisional":true}')


def test_a_tracker_started_mid_stream_is_provisional_until_a_sweep_batch_shares():
    """A live analyser started on frame 25 (its worker restarted, or the frames before were let
    go): it sweeps there, where batch tracked through, so frames 25-59 are provisional (the fill
    after stop gives them batch's results) and from the sweep on 60 they are batch's."""
    recording = load_recording("webcam_vp8_kf1s_250ms")
    frames = list(decoded_frames(recording.chunks))
    settings = TrackerSettings(detect_every=30, sweep_every=60)  # sweeps on 0, 60, 120
    on_time = FaceTracker(settings)
    batch = [frame_result(f.index, f.pts_ms, on_time.process(f.gray(), f.index)) for f in frames]
    for frames_before in (0, 25):  # a new tracker on frame 25; one that saw 0-24 and was reset
        tracker = FaceTracker(settings)
        for f in frames[25 - frames_before : 25]:
            tracker.process(f.gray(), f.index)
        tracker.reset()  # what the worker does after a gap: the tracks are stale
        live = [frame_result(f.index, f.pts_ms, tracker.process(f.gray(), f.index), tracker.provisional)
                for f in frames[25:]]  # fmt: skip
        assert [bool(r.get("provisional")) for r in live] == [True] * 35 + [False] * 119
        assert live[35:] == batch[60:]
        assert all(r["faces"] for r in live[:35])  # found at once all the same


def test_a_sweep_is_put_off_only_while_others_wait_and_the_budget_is_spent():
    budget = TimeBudget(share=1.0, burst_s=0.0)
    assert not budget.available()
    spent = TimeBudget(share=0.5, burst_s=0.1)
    assert spent.available()
    spent.spend(0.2)  # a sweep took more than there was: the next waits ~0.2 s
    assert not spent.available()
    others: list[bool] = [True]
    sweeps = SweepBudget(share=0.5, burst_s=0.1, waiting=lambda: others[0])
    assert sweeps.available()
    sweeps.spend(0.2)  # others waited for it: charged
    assert not sweeps.available()
    others[0] = False  # nobody waits: putting it off would help nobody, and it is not charged
    assert sweeps.available()
    sweeps.spend(10.0)
    others[0] = True
    assert not sweeps.available()
    assert sweeps.budget._tokens > -0.2  # the 10 s were not charged
    off = SweepBudget(share=0.0, burst_s=0.1, waiting=lambda: False)
    assert not off.available()  # live sweeps off
