"""Traffic for the integration tests, and how they judge its outcomes.

Shared by the delivery, fault, chaos and exactly-once suites.
"""

from __future__ import annotations

import json
import os
import threading
import time

from tests.helpers import record
from tests.integration.kafka_helpers import create_topics, produce, read_topic, wait_committed

FULL = os.environ.get("ANOMALY_CHAOS_FULL") == "1"


class Traffic:
    """Continuous traffic in small produced chunks: ids t0, t1, ...; every 25th an anomaly."""

    def __init__(self, bootstrap: str, topic: str, rate: float = 1_500.0) -> None:
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.ends: dict[int, int] = {}
        self.sent = 0
        self.bad = 0
        self._burst = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def burst(self, n: int) -> None:
        """Add ``n`` records to the next chunk: a backlog the workers need a while to drain."""
        self._burst += n

    def _run(self) -> None:
        chunk = max(int(self.rate / 10), 1)
        while not self._stop.is_set():
            started = time.monotonic()
            values, keys = [], []
            extra, self._burst = self._burst, 0
            for _ in range(chunk + extra):
                i = self.sent
                if i % 97 == 0:
                    values.append(b"not json")
                    self.bad += 1
                elif i % 25 == 0:
                    values.append(record([5, 5, 5, 5], id=f"t{i}"))
                else:
                    values.append(record([0.1, 0.2, 0.0, -0.1], id=f"t{i}"))
                keys.append(f"k{i}".encode())
                self.sent += 1
            for p, o in produce(self.bootstrap, self.topic, values, keys=keys).items():
                self.ends[p] = max(self.ends.get(p, 0), o)
            self._stop.wait(max(0.1 - (time.monotonic() - started), 0))

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def anomalies(self) -> set[str]:
        return {f"t{i}" for i in range(self.sent) if i % 25 == 0 and i % 97 != 0}


def assert_every_outcome(bootstrap, topics, topic, traffic, timeout_seconds) -> int:
    """Every offset committed, every anomaly alerted, every malformed record dead-lettered.

    Returns how many alerts were repeats (at-least-once allows them).
    """
    wait_committed(bootstrap, topics.group, topic, traffic.ends, timeout_seconds)
    alerts = read_topic(bootstrap, topics.alerts, len(traffic.anomalies()), 120)
    letters = read_topic(bootstrap, topics.dlq, traffic.bad, 120)
    alerted = [json.loads(r.value)["id"] for r in alerts]
    lettered = {
        (dict(r.headers)["source.partition"], dict(r.headers)["source.offset"]) for r in letters
    }
    assert set(alerted) == traffic.anomalies(), "an anomaly without an alert"
    assert len(lettered) == traffic.bad, "a malformed record without a dead letter"
    return len(alerted) - len(set(alerted))


def assigned_partitions(worker) -> set[str]:
    """Partitions a worker reports lag for: those it owns and has fetched."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = worker.http("/metrics")
    if status != 200:
        return set()
    return {
        sample.labels["partition"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "anomaly_consumer_lag"
    }


def settled(workers, partitions: int) -> bool:
    """Every running worker serves, and together they own each partition exactly once."""
    running = [w for w in workers if not w.exited()]
    owned = [assigned_partitions(w) for w in running]
    flat = [p for parts in owned for p in parts]
    return (
        all(w.http("/readyz")[0] == 200 for w in running)
        and len(flat) == partitions
        and len(set(flat)) == partitions
    )


def backlog(n, every=50, prefix="r"):
    """``n`` records, every ``every``-th an anomaly; returns the values and the anomalous ids."""
    values, anomalies = [], set()
    for i in range(n):
        rid = f"{prefix}{i}"
        if i % every == 0:
            values.append(record([5, 5, 5, 5], id=rid))
            anomalies.add(rid)
        else:
            values.append(record([0.5, -0.5, 0.25, 0.0], id=rid))
    return values, anomalies


def alerted_ids(bootstrap, topic, expect, timeout_seconds=30.0):
    return [
        json.loads(r.value)["id"] for r in read_topic(bootstrap, topic, expect, timeout_seconds)
    ]


def serving(
    kafka_bootstrap,
    topics,
    start_worker,
    partitions: int,
    replicas: int,
    batch_max_records: int = 500,
):
    """A topic of ``partitions``, ``replicas`` workers in the group serving it, and its env."""
    shared = f"{topics.input}-{partitions}p"
    create_topics(kafka_bootstrap, [shared], partitions=partitions)
    env = {"ANOMALY_INPUT_TOPIC": shared, "ANOMALY_BATCH_MAX_RECORDS": str(batch_max_records)}
    workers = [start_worker(**env) for _ in range(replicas)]
    for worker in workers:
        worker.wait_ready(60)
    return shared, env, workers
