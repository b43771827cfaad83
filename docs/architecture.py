"""Draws docs/architecture.png (run: .venv/bin/python docs/architecture.py)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

BOXES = {
    "producers": (0.2, 4.2, "your producers\nJSON feature records", "#eeeeee"),
    "input": (3.0, 4.2, "Kafka\ninput topic", "#ffe0b2"),
    "worker": (
        6.2,
        3.55,
        "anomaly-worker (one process per replica)\n\npoll -> decode (msgspec, batch)\n"
        "-> TorchScript autoencoder (GPU/CPU)\n-> threshold -> alerts / dead letters\n"
        "-> flush -> commit offsets",
        "#c8e6c9",
    ),
    "alerts": (11.4, 5.0, "Kafka\nalert topic", "#ffe0b2"),
    "dlq": (11.4, 3.5, "Kafka\ndead-letter topic", "#ffe0b2"),
    "prom": (6.6, 1.2, "Prometheus + Grafana\n/metrics  /healthz  /readyz", "#bbdefb"),
    "trainer": (
        0.2,
        1.2,
        "anomaly-train retrain\n(CronJob / schedule)\nwindow -> normal rows\n-> fit -> gate",
        "#e1bee7",
    ),
    "registry": (3.4, 1.2, "model registry\nversions/ + CURRENT", "#e1bee7"),
}
SIZES = {"worker": (4.4, 2.2), "trainer": (2.6, 1.5)}


def main() -> None:
    fig, ax = plt.subplots(figsize=(14, 6.5))
    ax.set_xlim(0, 14)
    ax.set_ylim(0.5, 6.5)
    ax.axis("off")
    centers = {}
    for name, (x, y, text, color) in BOXES.items():
        w, h = SIZES.get(name, (2.4, 1.1))
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=color, ec="#444"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)
        centers[name] = (x, y, w, h)

    def arrow(a, b, label="", side=("r", "l")):
        def point(name, where):
            x, y, w, h = centers[name]
            return {
                "r": (x + w, y + h / 2),
                "l": (x, y + h / 2),
                "t": (x + w / 2, y + h),
                "b": (x + w / 2, y),
            }[where]

        start, end = point(a, side[0]), point(b, side[1])
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color="#333"))
        if label:
            ax.text(
                (start[0] + end[0]) / 2,
                (start[1] + end[1]) / 2 + 0.12,
                label,
                ha="center",
                fontsize=8,
                color="#333",
            )

    arrow("producers", "input")
    arrow("input", "worker", "consumer group")
    arrow("worker", "alerts", "alert per anomaly")
    arrow("worker", "dlq", "bad records, unchanged")
    arrow("worker", "prom", "scrape", ("b", "t"))
    arrow("input", "trainer", "recent window", ("b", "t"))
    arrow("trainer", "registry", "promote")
    arrow("registry", "worker", "hot reload", ("r", "b"))
    ax.set_title(
        "anomaly-worker: records in, scored, alerts out; retrained on a schedule", fontsize=12
    )
    fig.savefig(Path(__file__).with_name("architecture.png"), dpi=90, bbox_inches="tight")


if __name__ == "__main__":
    main()
