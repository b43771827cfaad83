"""Draws docs/architecture.png (run: .venv/bin/python docs/architecture.py).

The system around the worker (topics, trainer, registry, Prometheus) and, inside the
worker, its packages in the order a record meets them.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

TOPIC, WORKER, TRAIN, OBSERVE, OTHER = "#ffe0b2", "#c8e6c9", "#e1bee7", "#bbdefb", "#eeeeee"
#: name: (x, y, width, height, text, colour)
BOXES = {
    "producers": (0.2, 6.0, 2.2, 1.1, "your producers\nJSON feature records", OTHER),
    "input": (2.9, 6.0, 2.0, 1.1, "Kafka\ninput topic", TOPIC),
    "alerts": (17.3, 7.0, 2.2, 1.0, "Kafka\nalert topic", TOPIC),
    "dlq": (17.3, 5.3, 2.2, 1.0, "Kafka\ndead-letter topic", TOPIC),
    # inside the worker, in the order a record meets them
    "kafka": (5.9, 6.0, 2.1, 1.1, "kafka/\nports, drivers,\nbroker link", WORKER),
    "batch": (8.3, 6.0, 1.9, 1.1, "core/\nmicro-batch", WORKER),
    "score": (10.5, 6.0, 2.1, 1.1, "contract/\ndecode, score\n(TorchScript)", WORKER),
    "decide": (12.9, 6.0, 1.9, 1.1, "core/\nthreshold, alerts,\ndead letters", WORKER),
    "delivery": (
        15.0,
        4.2,
        1.7,
        2.9,
        "delivery/\noutputs;\ncommit:\nat-least-once\nor exactly-once",
        WORKER,
    ),
    "model": (10.5, 4.2, 2.1, 1.1, "model/\nserved model,\nhot reload", WORKER),
    "observe": (6.0, 4.2, 3.6, 1.1, "observe/\nmetrics, /healthz, /readyz, logs", OBSERVE),
    "prom": (6.0, 1.3, 3.6, 1.1, "Prometheus + Grafana\nalert rules, dashboard", OBSERVE),
    "trainer": (
        0.2,
        1.3,
        3.0,
        1.5,
        "training/ (anomaly-train)\nwindow -> normal rows\n-> fit -> gate -> publish",
        TRAIN,
    ),
    "registry": (10.25, 1.3, 2.6, 1.1, "model registry\nversions/ + CURRENT", TRAIN),
}


def main() -> None:
    fig, ax = plt.subplots(figsize=(17, 7.5))
    ax.set_xlim(0, 19.8)
    ax.set_ylim(0.4, 8.6)
    ax.axis("off")
    # the worker process, around its packages
    ax.add_patch(
        FancyBboxPatch((5.6, 3.8), 11.35, 4.5, boxstyle="round,pad=0.05", fc="#f1f8e9", ec="#444")
    )
    ax.text(
        5.8,
        8.05,
        "anomaly-worker (one process per replica): pipeline.py runs the loop, app.py wires it",
        fontsize=9,
        color="#333",
    )
    where = {}
    for name, (x, y, w, h, text, color) in BOXES.items():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=color, ec="#444"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)
        where[name] = (x, y, w, h)

    def point(name, side):
        x, y, w, h = where[name]
        return {
            "r": (x + w, y + h / 2),
            "l": (x, y + h / 2),
            "t": (x + w / 2, y + h),
            "b": (x + w / 2, y),
        }[side]

    def arrow(a, b, label="", sides=("r", "l"), dashed=False):
        start, end = point(a, sides[0]), point(b, sides[1])
        ax.add_patch(
            FancyArrowPatch(
                start,
                end,
                arrowstyle="-|>",
                mutation_scale=13,
                color="#333",
                linestyle="--" if dashed else "-",
            )
        )
        if label:
            ax.text(
                (start[0] + end[0]) / 2,
                (start[1] + end[1]) / 2 + 0.12,
                label,
                ha="center",
                fontsize=7.5,
                color="#333",
            )

    arrow("producers", "input")
    arrow("input", "kafka", "consumer group")
    arrow("kafka", "batch", "records")
    arrow("batch", "score", "batch")
    arrow("score", "decide", "scores")
    arrow("decide", "delivery", "outputs", ("b", "l"))
    arrow("delivery", "alerts", "alert per anomaly", ("r", "l"))
    arrow("delivery", "dlq", "bad records", ("r", "l"))
    ax.add_patch(
        FancyArrowPatch(
            (15.0, 5.65),
            (6.95, 6.0),
            arrowstyle="-|>",
            mutation_scale=13,
            color="#333",
            linestyle="--",
            connectionstyle="angle,angleA=180,angleB=90,rad=0",
        )
    )
    ax.text(11.5, 5.72, "commit offsets (through the consumer)", ha="center", fontsize=7.5)
    arrow("model", "score", "", ("t", "b"))
    arrow("observe", "prom", "scrape", ("b", "t"))
    arrow("input", "trainer", "recent window", ("b", "t"))
    ax.add_patch(
        FancyArrowPatch(
            (3.2, 1.6),
            (10.25, 1.6),
            arrowstyle="-|>",
            mutation_scale=13,
            color="#333",
            connectionstyle="arc3,rad=0.25",
        )
    )
    ax.text(
        6.7, 0.55, "publish, promote (worker/contract is the format)", ha="center", fontsize=7.5
    )
    arrow("registry", "model", "new CURRENT", ("t", "b"))
    ax.set_title(
        "anomaly-worker: records in, scored, alerts out; retrained on a schedule", fontsize=12
    )
    fig.savefig(Path(__file__).with_name("architecture.png"), dpi=80, bbox_inches="tight")


if __name__ == "__main__":
    main()
