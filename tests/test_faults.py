"""Faults inside the server are answered clearly and recovered from while it runs (issue 9):
a real full filesystem (a small tmpfs), then space freed again."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client import Client, http_get, http_json, run, wait_for_summary, wait_until
from tests.conftest import load_recording

RECORDING = load_recording("webcam_vp8_kf1s_250ms")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB filesystem of its own (tmpfs), so that filling it up harms nothing else."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and a kernel that allows it): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_up(folder: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on ``folder``'s filesystem."""
    stat = os.statvfs(folder)
    ballast = folder / "ballast"
    with open(ballast, "wb") as f:
        f.truncate(0)
        size = stat.f_bavail * stat.f_frsize - leave
        f.write(b"\0" * size)  # tmpfs: really allocated, unlike a sparse truncate
    return ballast


def test_disk_full_then_freed_while_the_server_runs(server_factory, small_disk):
    data = small_disk / "data"
    server = server_factory(data=data)
    frames = RECORDING.expected["video_frames"]

    async def scenario() -> None:
        async with Client(server.url) as client:
            session = await client.start(RECORDING.meta["mime"])
            ballast = fill_up(small_disk, leave=200_000)
            refused = None
            for seq, chunk in enumerate(RECORDING.chunks):
                ack = await client.chunk(session, seq, chunk)
                if not ack["ok"]:
                    refused = (seq, ack)
                    break
            assert refused is not None, "the disk never filled up"
            failed, ack = refused
            assert ack == {"ok": False, "error": {"code": "storage_full", "message": (
                "the server's disk is full: the chunk was not stored; retry later"
            )}}  # fmt: skip
            # the disk to its last byte, and the chunks stored so far still analysed: the worker's
            # landmarks reach the page but cannot be written (the pipe must not stall on that)
            with open(ballast, "ab", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError:
                    pass
            stored = (await http_json(f"{server.url}/api/sessions/{session['session_id']}"))[1]["frames"]

            async def all_sent() -> bool:
                return sum(len(e["frames"]) for e in client.events.get("landmarks", [])) >= stored

            await wait_until(all_sent, f"landmarks of the {stored} stored frames sent while the disk is full")
            ballast.unlink()  # space is back: everything goes on, no restart
            for seq in range(failed, len(RECORDING.chunks)):
                assert (await client.chunk(session, seq, RECORDING.chunks[seq]))["ok"]
            assert (await client.stop(session))["ok"]
            summary = await wait_for_summary(
                f"{server.url}/api/sessions/{session['session_id']}",
                lambda s: s["analysed_frames"] == frames and s["skipped_frames"] == 0 and "fill" not in s
                and s["finalized"],
                "landmarks complete after the disk was freed",
            )  # fmt: skip
            assert summary["frames"] == frames and summary["state"] == "stopped"
            _, raw, _ = await http_get(f"{server.url}/api/sessions/{session['session_id']}/raw.webm")
            assert raw == RECORDING.stream  # byte for byte what was sent
            lines = (data / "sessions" / session["session_id"] / "landmarks.jsonl").read_text().splitlines()
            assert [json.loads(line)["index"] for line in lines] == list(range(frames))
            # and a new session records and is analysed as usual
            second = await client.start(RECORDING.meta["mime"])
            await client.send_all(second, RECORDING.chunks)
            assert (await client.stop(second))["ok"]
            await wait_for_summary(
                f"{server.url}/api/sessions/{second['session_id']}",
                lambda s: s["analysed_frames"] == frames and "fill" not in s and s["finalized"],
                "a session recorded after the fault",
            )

    run(scenario())
