"""The page's send-queue logic under node's own test runner (web/tests/*.test.mjs)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

FILES = sorted((ROOT / "web" / "tests").glob("*.test.mjs"))


def declared_tests() -> int:
    """The test() calls the files declare (each at the start of a line, as they are written)."""
    return sum(len(re.findall(r"^test\(", path.read_text(), flags=re.MULTILINE)) for path in FILES)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node (apt-get install nodejs)")
def test_send_queue_node_tests():
    declared = declared_tests()
    assert FILES and declared > 0
    result = subprocess.run(["node", "--test", *map(str, FILES)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = {k: int(v) for k, v in re.findall(r"^# (\w+) (\d+)$", result.stdout, flags=re.MULTILINE)}
    counts.pop("suites", None)
    counts.pop("duration_ms", None)
    # every declared test ran and passed: none failed, skipped, cancelled or left out
    assert counts == {"tests": declared, "pass": declared, "fail": 0, "cancelled": 0, "skipped": 0, "todo": 0}, (
        result.stdout
    )
