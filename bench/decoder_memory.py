"""What one session's decoder costs at the frame-size limit (max_frame_pixels, issue #25).

Encodes a few frames at WIDTHxHEIGHT with each accepted codec (Debian's ffmpeg: libvpx,
libvpx-vp9 8 and 10 bit, libx264 with 16 reference frames and B-frames, libsvtav1), then decodes
each in a fresh process with camingest's own decoder (ingest.media.decode.UnitDecoder: one
thread, as the workers run it), and prints the process's peak resident memory over its baseline
(PyAV imported, nothing decoded).

    python3 bench/decoder_memory.py [--size 4096x2304] [--frames 24]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODECS = {
    "vp8": ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "2M"],
    "vp9": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "2M"],
    "vp9 10-bit": ["-c:v", "libvpx-vp9", "-profile:v", "2", "-pix_fmt", "yuv420p10le", "-deadline", "realtime",
                   "-cpu-used", "8", "-b:v", "2M"],
    "h264 16 refs, B-frames": ["-c:v", "libx264", "-preset", "ultrafast", "-refs", "16", "-bf", "3",
                               "-x264-params", "b-adapt=0", "-pix_fmt", "yuv420p"],
    "av1": ["-c:v", "libsvtav1", "-preset", "12", "-b:v", "2M"],
}  # fmt: skip

CHILD = """
import json, resource, sys
sys.path.insert(0, {root!r})
import av
from ingest.media.decode import UnitDecoder
from ingest.media.webm import WebMReader, build_unit
data = open(sys.argv[1], "rb").read()
reader = WebMReader()
unit = reader.feed(data)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decoder = UnitDecoder()
frames = sum(1 for _ in decoder.decode(build_unit(bytes(reader.init), unit.clusters)))
frames += sum(1 for _ in decoder.flush())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"frames": frames, "base_kib": base, "peak_kib": peak, "size": [decoder.width, decoder.height]}}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4096x2304")
    parser.add_argument("--frames", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'codec':<26} {'frames':>6} {'decoder MiB':>12}  (peak RSS over the process's baseline)")
        for name, options in CODECS.items():
            out = Path(tmp) / f"{name.replace(' ', '_').replace(',', '')}.mkv"
            encode = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={args.size}:rate=25",
                      "-frames:v", str(args.frames), *options, "-threads", "2", str(out)]  # fmt: skip
            subprocess.run(encode, check=True)
            child = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), str(out)],
                                   capture_output=True, text=True, check=True)  # fmt: skip
            result = json.loads(child.stdout)
            cost = (result["peak_kib"] - result["base_kib"]) / 1024
            print(f"{name:<26} {result['frames']:>6} {cost:>12.0f}  {result['size'][0]}x{result['size'][1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
