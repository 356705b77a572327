"""The blocking-call check every test server runs with (tests/blocking_server.py): a blocking
call made on the event loop's thread is reported with its stack, once per stack, and goes on;
the same call from a worker thread, or with no loop running, is not."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.blocking_server import reports_in
from tests.conftest import ROOT

PROGRAM = """
import asyncio, time
from tests.blocking_server import activate
activate()

def read_self():
    with open(__file__, "rb") as f:
        return len(f.read())

async def main():
    for _ in range(3):
        time.sleep(0.001)  # on the loop: reported once (the same stack each time)
    size = read_self()  # on the loop: reported, and it still returns what it read
    await asyncio.to_thread(time.sleep, 0.001)  # in a thread: fine
    assert size == await asyncio.to_thread(read_self)  # in a thread: fine
    print("done", size)

asyncio.run(main())
time.sleep(0.001)  # no loop running: fine
"""


def test_blocking_calls_on_the_loop_are_reported_and_go_on(tmp_path):
    program = tmp_path / "blocks.py"
    program.write_text(PROGRAM)
    result = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("done ") and int(result.stdout.split()[1]) > 0
    reports = reports_in(result.stderr)
    assert [r.splitlines()[0] for r in reports] == [
        "BlockingError: blocking call to time.sleep on the event loop thread",
        "BlockingError: blocking call to io.BufferedReader.read on the event loop thread",
    ]
    assert "in main" in reports[0] and "time.sleep(0.001)  # on the loop" in reports[0]  # the caller's stack
    assert "in read_self" in reports[1]
