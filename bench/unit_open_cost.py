"""What a live worker's per-unit container open and demux cost, beside the decoding itself.

    python3 bench/unit_open_cost.py [--rounds 3]

The 45 s 640x480 VP8 session (``bench/common.py long_recording``) cut into 250 ms blobs, fed to
the server's reader and built into units as the chunk path does; then, on one core, alternating
round by round: the units through ``UnitDecoder`` (open + demux + VP8 decode, as a live worker),
and open + demux alone (the packets read, none decoded). The second is what feeding the decoder
the reader's own blocks (no ``av.open`` per unit) could save at most.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av

from bench.common import blobs_of, long_recording, machine_notes
from ingest.media.decode import UnitDecoder
from ingest.media.webm import WebMReader, build_unit


def units_of(path: Path) -> list[bytes]:
    blobs, _ = blobs_of(path)
    reader = WebMReader(64 << 20)
    units = []
    for blob in blobs:
        unit = reader.feed(blob)
        units.append(build_unit(bytes(reader.init), unit.clusters))
    return units


def decoded(units: list[bytes]) -> int:
    decoder, frames = UnitDecoder(), 0
    for unit in units:
        frames += sum(1 for _ in decoder.decode(unit))
    return frames + sum(1 for _ in decoder.flush())


def opened_and_demuxed(units: list[bytes]) -> int:
    packets = 0
    for unit in units:
        with av.open(io.BytesIO(unit), format="webm") as container:
            packets += sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    return packets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("#", machine_notes())
    units = units_of(long_recording())
    frames = decoded(units)
    for round_ in range(args.rounds):
        for what, run in (("open + demux + decode", decoded), ("open + demux only", opened_and_demuxed)):
            load = os.getloadavg()[0]
            start = time.process_time()
            run(units)
            ms = (time.process_time() - start) * 1000 / frames
            print(json.dumps({"round": round_ + 1, "what": what, "units": len(units), "frames": frames,
                              "cpu_ms_per_frame": round(ms, 3), "load_before": round(load, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
