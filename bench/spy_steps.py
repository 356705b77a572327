"""Where an analysis worker's time goes under load: py-spy samples grouped into the steps of a frame.

``bench/profile_frame.py`` times every step of one session on a quiet core; this reads what a
sampling profiler saw in the live workers of a running server (30 sessions, say), where
contention and the live policy (frames decoded but not landmarked) change the shares::

    python3 bench/table_bench.py live --sessions 30 --seconds 20 &
    sleep 9; server=$(pgrep -f "ingest.cli serve --port 0" | head -1)
    for w in $(cat /proc/$server/task/$server/children); do
        py-spy record --nonblocking -r 100 -d 18 -f raw -o /tmp/w$w.txt -p $w & done; wait
    python3 bench/spy_steps.py /tmp/w*.txt

py-spy (``pip install py-spy``) runs beside the server on the same cores: it slows what it
measures, so read the shares, not the throughput of such a run.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

# (a step's name, what identifies it in a sample's stack), the first that matches wins: the
# codec's own work is attributed by py-spy to the Python line that called it
STEPS: list[tuple[str, tuple[str, ...]]] = [
    ("decode: VP8/VP9/H.264 codec", ("decode.py:102",)),
    ("decode: container open per unit", ("decode.py:80",)),
    ("decode: demux", ("decode.py:92", "decode.py:93")),
    ("decode: frame objects", ("UnitDecoder._frames",)),
    ("detection: sweeps (upsample 1)", ("FaceTracker._sweep",)),
    ("detection: quick pass (half size)", ("FaceTracker._quick_pass",)),
    ("detection: refreshes (half size)", ("FaceTracker._refresh", "FaceTracker._half_size_boxes")),
    ("68-point fit", ("FaceTracker._fit",)),
    ("detection: crop searches", ("detect",)),
    ("tracker: scene-cut thumbnail", ("FaceTracker._scene_cut",)),
    ("pipe: pickle, send, receive", ("Connection", "Pickler")),
    ("tracker: bookkeeping", ("FaceTracker",)),
    ("worker: results, dispatch", ("SessionAnalyser", "Worker.handle")),
]


def step_of(stack: str) -> str:
    for name, marks in STEPS:
        if any(mark in stack for mark in marks):
            return name
    return "other (threads, the loop itself)"


def shares(paths: list[Path]) -> tuple[collections.Counter[str], int]:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")  # py-spy raw: "frame;frame;... count"
            if not stack:
                continue
            counts[step_of(stack)] += int(n)
            total += int(n)
    return counts, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", type=Path, nargs="+", help="py-spy record -f raw outputs (one per worker)")
    args = parser.parse_args()
    counts, total = shares(args.raw)
    print(f"{total} samples")
    for name, n in counts.most_common():
        print(f"{100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
