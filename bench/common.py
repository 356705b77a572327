"""Helpers shared by the benchmarks: fixtures, a server subprocess, machine notes."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"  # the recordings and images the tests use, in the repo
RECORDINGS = FIXTURES / "recordings"
IMAGES = FIXTURES / "images"


def chunks_of(name: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((RECORDINGS / name).glob("chunk_*.webm"))]


def machine_notes() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def start_server(data: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", "serve", "--port", "0", "--data", str(data), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"(http://\S+?)/ ", line)
        if match:
            return proc, match.group(1)
    raise RuntimeError("server did not start")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
