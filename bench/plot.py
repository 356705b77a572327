"""Bar chart of frames/s per configuration from ``landmarks_bench.py pipeline`` output.

python bench/plot.py bench/results/pipeline.txt bench/results/pipeline.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter


def main(source: str, out: str) -> None:
    with open(source) as f:
        lines = [line for line in f if line.startswith("{")]
    results = json.loads(lines[-1])
    names = list(results)
    configs = [("decode_fps", "decode only"), ("camingest_fps", "camingest (decode + track + 68 pts)"),
               ("naive_fps", "naive (VideoCapture + detect up1 + 68 pts)")]  # fmt: skip
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.27
    for i, (key, label) in enumerate(configs):
        values = [results[n][key] for n in names]
        bars = ax.bar([x + (i - 1) * width for x in range(len(names))], values, width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(names)), [n.replace("_250ms", "") for n in names], fontsize=8)
    ax.set_ylabel("frames/s on one core (log)")
    ax.set_yscale("log")
    ax.set_title("640x480 fixtures, one core, one run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])


def distributions(panels: dict[str, dict[str, list[float]]], out: str | object, title: str, xlabel: str) -> None:
    """One panel per measure, an empirical CDF per configuration in it (log x when the values
    span more than a decade)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.2), squeeze=False)
    for ax, (panel, groups) in zip(axes[0], panels.items(), strict=True):
        spread = [v for values in groups.values() for v in values if v > 0]
        for label, values in groups.items():
            if not values:
                continue
            ordered = sorted(values)
            ranks = [100 * (i + 1) / len(ordered) for i in range(len(ordered))]
            ax.step(ordered, ranks, where="post", label=f"{label} (n={len(ordered)})")
        if spread and max(spread) / max(min(spread), 1e-9) > 20:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: the minor ones overlap
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("percentile")
        ax.set_yticks([0, 25, 50, 75, 90, 95, 99])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
