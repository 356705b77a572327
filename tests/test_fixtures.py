"""The fixtures are the repository's own (issue 18): every recording's expected.json is what
ffprobe says of its chunks, and no test reads anything outside the repository."""

from __future__ import annotations

import importlib.util
import re

import pytest

from tests.conftest import RECORDING_NAMES, RECORDINGS, ROOT, TOOLS

spec = importlib.util.spec_from_file_location("fixture_expected", TOOLS / "expected.py")
assert spec is not None and spec.loader is not None
expected_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(expected_tool)

ALL_RECORDINGS = sorted(p.name for p in RECORDINGS.iterdir() if p.is_dir())


def test_every_recording_is_here():
    assert sorted([*RECORDING_NAMES, "two_people_720p_vp8", "webcam_av1_250ms"]) == ALL_RECORDINGS


@pytest.mark.parametrize("name", ALL_RECORDINGS)
def test_expected_json_is_what_ffprobe_says(name):
    import json

    stored = json.loads((RECORDINGS / name / "expected.json").read_text())
    measured = expected_tool.figures(RECORDINGS / name)
    stored.pop("snapshots_recorded", None)
    assert measured == stored


def test_no_test_reads_outside_the_repository():
    outside = re.compile(r"\.\./shared|CAMINGEST_SHARED|/\s*\"shared\"")  # the old ../shared/fixtures
    files = [p for p in sorted((ROOT / "tests").rglob("*.py")) if p.name != "test_fixtures.py"]
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in files
            for n, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]  # fmt: skip
    assert hits == []
