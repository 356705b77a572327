"""How VP8 decoding scales from one busy core to all of them: the ceiling of live analysis.

    python3 bench/decode_scaling.py [--seconds 45] [--rounds 3] [--procs 1 2]

Decodes the 640x480 VP8 session of ``bench/common.py long_recording`` (as the live workers do:
FFmpeg's decoder, no frame threads) in N processes at once, N alternating round by round, and
prints each run's frames/s per process and in all, with the load average before and after.
If two processes decode at under twice one's rate, the cores share something (SMT siblings,
a host's other guests): the live capacity of the machine is then what the two-process total says.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import long_recording, machine_notes


def decode_fps(path: str) -> float:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        start = time.perf_counter()
        frames = sum(1 for _ in container.decode(stream))
    return frames / (time.perf_counter() - start)


def run(path: Path, procs: int) -> dict[str, object]:
    before = os.getloadavg()[0]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        rates = pool.map(decode_fps, [str(path)] * procs)
    return {"procs": procs, "fps_each": [round(r) for r in rates], "fps_total": round(sum(rates)),
            "load_before": round(before, 2), "load_after": round(os.getloadavg()[0], 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=45)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    path = long_recording(args.seconds)
    print("#", machine_notes())
    for _ in range(args.rounds):
        for procs in args.procs:
            print(json.dumps(run(path, procs)), flush=True)


if __name__ == "__main__":
    main()
