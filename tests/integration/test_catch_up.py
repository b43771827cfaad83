"""Catching up on a backlog: the librdkafka worker's fetches never pause for a second.

librdkafka stops fetching a partition whose local queue holds ``queued.min.messages``
records and, by default, looks again only after ``fetch.queue.backoff.ms`` = 1 s, however
soon the queue is empty. A worker catching up after a restart, a rebalance or a burst
then waits on an empty queue for most of each second (a drain ran at half its rate,
docs/benchmarks.md). The worker's consumer looks again after 100 ms; this test makes the
queue limit and the fetch size small so that 4 MB of backlog cross the limit many times.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.kafka_helpers import create_topics, produce
from worker.contract.messages import Partition
from worker.settings import WorkerSettings

RECORDS = 2_000
VALUE = b"x" * 2_000  # 4 MB in all
#: For this test only: queue limit (librdkafka's default is 100,000 records) and fetch size
#: (50 MB by default), so that each fetch (~100 records) fills the queue past its limit.
SMALL_QUEUE = {"queued.min.messages": 50, "fetch.max.bytes": 200_000, "message.max.bytes": 100_000}


class Hooks:
    """Rebalance hooks of a consumer that commits nothing and keeps no state."""

    def prepare_revoke(self) -> dict[Partition, int]:
        return {}

    def committed(self, offsets: dict[Partition, int]) -> None:
        pass

    def revoked(self, revoked: set[Partition]) -> None:
        pass

    def lost(self, lost: set[Partition]) -> None:
        pass

    def on_assigned(self, assigned: set[Partition]) -> None:
        pass


def test_librdkafka_worker_drains_a_backlog_without_fetch_pauses(kafka_bootstrap, monkeypatch):
    pytest.importorskip("confluent_kafka")
    from worker.kafka import confluent

    topic = f"catch-up-{time.monotonic_ns()}"
    create_topics(kafka_bootstrap, [topic], partitions=1)
    produce(kafka_bootstrap, topic, [VALUE] * RECORDS, config={"batch.num.messages": 100})
    worker_config = confluent.consumer_config
    monkeypatch.setattr(
        confluent,
        "consumer_config",
        lambda *a: {**worker_config(*a), **SMALL_QUEUE},
    )
    settings = WorkerSettings(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"catch-up-{time.monotonic_ns()}",
        session_timeout_seconds=6,
        heartbeat_interval_seconds=1,
        auto_offset_reset="earliest",
    )
    consumer = confluent.ConfluentConsumer(settings.connection(), settings.consumer_options())
    try:
        consumer.subscribe(topic, Hooks())
        read, gaps, last = 0, [], None
        deadline = time.monotonic() + 60
        while read < RECORDS and time.monotonic() < deadline:
            chunk = consumer.poll(0.1, 500)
            if chunk is None:
                continue
            now = time.monotonic()
            if last is not None:
                gaps.append(now - last)
            last = now
            read += len(chunk.values)
    finally:
        consumer.close()
    assert read == RECORDS
    # With librdkafka's default backoff, 19 of the 20 gaps are 1.00 s; with the worker's, 0.1 s.
    assert max(gaps) < 0.5, f"pauses between records: {sorted(gaps)[-5:]}"
