"""Synthetic service telemetry with labelled anomalies, for the demo.

Six correlated features follow a daily cycle (one "day" lasts ``day_seconds``
of wall time) with noise. Injected anomalies, each labelled:

- ``spike``: one feature jumps far outside its range;
- ``broken_correlation``: latency rises while traffic stays normal;
- ``drift``: during a drift episode three hosts' CPU runs 40% hotter than their traffic
  explains (15% of all records: the score's distribution drifts with them);
- ``malformed``: not a valid record at all (it belongs in the dead-letter topic).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["FEATURES", "Event", "TrafficGenerator"]

FEATURES = (
    "requests_per_s",
    "cpu_percent",
    "memory_gb",
    "latency_ms",
    "error_rate",
    "bytes_out_mb",
)


@dataclass(frozen=True)
class Event:
    id: str
    value: bytes
    kind: str  # "normal", "spike", "broken_correlation" or "malformed"


class TrafficGenerator:
    def __init__(
        self, seed: int = 0, day_seconds: float = 120.0, hosts: int = 20, hot_hosts: int = 3
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.day_seconds = day_seconds
        self.hosts = hosts
        self.hot_hosts = hot_hosts  # running hot during a drift episode
        self.counter = 0
        self.day_start = 0.0  # the time (s) at which a simulated day begins

    def start_day(self, at: float) -> None:
        """Begin a simulated day at time ``at``: the daily cycle's phase then no longer
        depends on the wall clock, and a run is reproducible."""
        self.day_start = at

    def normal_rows(self, n: int, t0: float = 0.0, span_seconds: float | None = None) -> np.ndarray:
        span = self.day_seconds if span_seconds is None else span_seconds
        t = t0 + self.rng.uniform(0.0, span, size=n)
        return self._rows(t)

    def _rows(self, t: np.ndarray) -> np.ndarray:
        n = len(t)
        phase = np.sin(2 * math.pi * (t - self.day_start) / self.day_seconds)
        noise = self.rng.normal(size=(n, 6))
        requests = 500 + 300 * phase + 30 * noise[:, 0]
        cpu = 10 + 0.08 * requests + 2 * noise[:, 1]
        memory = 4 + 0.004 * requests + 0.1 * noise[:, 2]
        latency = 20 + 0.02 * requests + 1.5 * noise[:, 3]
        errors = np.abs(0.002 + 0.001 * noise[:, 4])
        bytes_out = 0.05 * requests + 2 * noise[:, 5]
        return np.column_stack([requests, cpu, memory, latency, errors, bytes_out]).astype(
            np.float32
        )

    def events(
        self,
        n: int,
        now: float,
        anomaly_rate: float = 0.01,
        malformed_rate: float = 0.001,
        drifting: bool = False,
    ) -> list[Event]:
        rows = self._rows(np.full(n, now))
        kinds = self.rng.choice(
            ["normal", "spike", "broken_correlation", "malformed"],
            size=n,
            p=[
                1 - anomaly_rate - malformed_rate,
                anomaly_rate / 2,
                anomaly_rate / 2,
                malformed_rate,
            ],
        )
        events = []
        for row, kind in zip(rows, kinds, strict=True):
            self.counter += 1
            rid = f"evt-{self.counter}"
            host = self.counter % self.hosts
            if drifting and host < self.hot_hosts and kind == "normal":
                kind = "drift"
                row[1] = row[1] * 1.4 + 10
            if kind == "spike":
                j = int(self.rng.integers(0, 6))
                row[j] = row[j] * 4 + 50
            elif kind == "broken_correlation":
                row[3] = row[3] * 2.5  # latency up, traffic unchanged
            if kind == "malformed":
                value = b'{"id": "%s", "features": "oops"}' % rid.encode()
            else:
                body = {
                    "id": rid,
                    "ts": now,
                    "entity": f"host-{host}",
                    "features": [round(float(x), 4) for x in row],
                }
                value = json.dumps(body).encode()
            events.append(Event(rid, value, str(kind)))
        return events
