"""The page's send-queue logic under node's own test runner (web/tests/*.test.mjs)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node (apt-get install nodejs)")
def test_send_queue_node_tests():
    result = subprocess.run(
        ["node", "--test", *sorted(str(p) for p in (ROOT / "web" / "tests").glob("*.test.mjs"))],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# pass 6" in result.stdout
