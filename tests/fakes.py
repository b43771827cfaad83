"""Test doubles of the Kafka ports, and a pipeline wired to them as the worker wires its own.

The doubles take the same commit-on-revoke path as both real drivers
(:func:`worker.kafka.ports.commit_on_revoke`); :func:`make_pipeline` builds the loop with
:func:`worker.app.build_pipeline`, so the processing guarantee is chosen where the worker
chooses it.
"""

from __future__ import annotations

import threading
import time

from tests.helpers import write_distance_bundle
from worker.app import PipelineConfig, build_pipeline
from worker.contract.messages import Message
from worker.contract.scoring import Scorer
from worker.core.threshold import Threshold
from worker.kafka.ports import (
    Chunk,
    TransactionAbortable,
    TransportError,
    commit_on_revoke,
    run_inline,
)
from worker.observe.health import HealthState
from worker.observe.metrics import WorkerMetrics

__all__ = [
    "FakeConsumer",
    "FakeProducer",
    "FlakyConsumer",
    "LogConsumer",
    "TransactionalProducer",
    "chunk",
    "make_pipeline",
    "messages",
    "run_once",
]


class FakeProducer:
    """A transport producer whose deliveries are decided at flush."""

    def __init__(self, log):
        self.log, self.sent, self._pending = log, [], []
        self.fail_with = None

    def send(self, topic, key, value, headers, on_delivery):
        self.sent.append((topic, key, value, headers))
        self._pending.append(on_delivery)

    def flush(self, timeout):
        self.log.append("flush")
        for on_delivery in self._pending:
            on_delivery(self.fail_with)
        self._pending = []

    def renew(self):
        """A new producer: what was in flight is gone with the old one; the new one works."""
        self.log.append("renew")
        self._pending, self.fail_with = [], None


class TransactionalProducer(FakeProducer):
    """A transactional transport producer; ``outcomes`` scripts what each commit call does."""

    def __init__(self, log):
        super().__init__(log)
        self.outcomes: list[BaseException | None] = []
        self.open = False
        self.transactions: list[tuple[dict, object, list]] = []  # committed: offsets, group, sent
        self.aborted: list[list] = []
        self._in_transaction: list = []

    def _deliver(self, error):
        for on_delivery in self._pending:
            on_delivery(error)
        self._pending = []

    def begin_transaction(self):
        assert not self.open, "a transaction is already open"
        self.open = True
        self.log.append("begin")

    def send(self, topic, key, value, headers, on_delivery):
        assert self.open, "an output sent outside a transaction"
        super().send(topic, key, value, headers, on_delivery)
        self._in_transaction.append((topic, value))

    def commit_transaction(self, offsets, group, timeout):
        self.log.append("commit_transaction")
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, TransactionAbortable) and self.fail_with is not None:
            self._deliver(self.fail_with)  # a refused output is reported before the commit fails
        if outcome is not None:
            raise outcome
        self._deliver(None)
        self.transactions.append((dict(offsets), group, self._in_transaction))
        self._in_transaction, self.open = [], False

    def abort_transaction(self, timeout):
        self.log.append("abort")
        self._deliver(TransportError("purged by the abort"))  # what an abort purges fails
        self.aborted.append(self._in_transaction)
        self._in_transaction, self.open = [], False


class FakeConsumer:
    """A transport consumer replaying scripted chunks."""

    def __init__(self, log, batches):
        self.log, self.batches = log, list(batches)
        self.commits = []
        self.hooks = None

    def subscribe(self, topic, hooks):
        self.hooks = hooks
        hooks.on_assigned({("in", 0), ("in", 1)})

    def poll(self, timeout, max_records):
        return self.batches.pop(0) if self.batches else None

    def source_of(self, message):
        return message

    def commit(self, offsets, timeout):
        self.log.append("commit")
        self.commits.append(dict(offsets))

    def highwater(self, partition):
        return 10

    def link_age(self):
        return None

    topic_ids: dict = {}  # topic -> id, as the client's metadata says (none: it does not tell)
    resets: list = []

    def topic_id(self, topic):
        return self.topic_ids.get(topic)

    def reset_positions(self, partitions):
        self.resets = [*self.resets, sorted(partitions)]

    def revoke(self, partitions):
        """What both drivers do when partitions move: the one commit-on-revoke path."""

        async def commit(offsets):
            self.commit(offsets, 5)

        run_inline(commit_on_revoke(self.hooks, partitions, commit))


class FlakyConsumer(FakeConsumer):
    """Raises what a transport raises during a network cut, then recovers."""

    def __init__(self, log, batches, failures):
        super().__init__(log, batches)
        self.failures = list(failures)

    def poll(self, timeout, max_records):
        if self.failures:
            raise self.failures.pop(0)
        return super().poll(timeout, max_records)


class LogConsumer(FakeConsumer):
    """A consumer over in-memory partition logs: polls read on from each position, seeks move it."""

    def __init__(self, log, partitions):
        super().__init__(log, [])
        self.partitions = {p: list(records) for p, records in partitions.items()}
        self.positions = {p: records[0].offset for p, records in self.partitions.items() if records}
        self.seeks = []

    def poll(self, timeout, max_records):
        parts = []
        for partition, records in self.partitions.items():
            fresh = [m for m in records if m.offset >= self.positions.get(partition, 0)]
            fresh = fresh[: max_records - sum(len(p) for p in parts)]
            if fresh:
                parts.append(fresh)
                self.positions[partition] = fresh[-1].offset + 1
        return chunk(*parts) if parts else None

    def seek(self, partition, offset):
        self.seeks.append((partition, offset))
        self.positions[partition] = offset

    def group_metadata(self):
        return "generation-1"


def messages(partition, values, start=0):
    """Records of ``partition`` from offset ``start``, timestamped now (as a broker does)."""
    now_ms = int(time.time() * 1000)
    return [Message("in", partition, start + i, now_ms, None, v) for i, v in enumerate(values)]


def chunk(*parts):
    """One poll's records: lists of messages, one per partition."""
    records = [m for part in parts for m in part]
    return Chunk(
        records,
        [m.value for m in records],
        {(part[-1].topic, part[-1].partition): part[-1].offset for part in parts},
    )


def make_pipeline(
    tmp_path,
    batches,
    consumer=None,
    producer=None,
    clock=time.monotonic,
    bundle=None,
    metrics=None,
    **config,
):
    """A pipeline over the distance bundle (threshold 4; or the bundle at ``bundle``, at its
    threshold) and fakes; ``config`` overrides :class:`~worker.app.PipelineConfig`'s test
    defaults. Returns (pipeline, consumer, producer, log): ``log`` lists the flushes and
    commits in order."""
    if bundle is None:
        write_distance_bundle(tmp_path)
    scorer = Scorer.load(bundle or tmp_path, "cpu")
    log = []
    consumer = consumer(log) if consumer is not None else FakeConsumer(log, batches)
    producer = producer(log) if producer is not None else FakeProducer(log)
    defaults = dict(
        input_topic="in",
        alert_topic="alerts",
        dlq_topic="dlq",
        batch_max_records=100,
        batch_max_wait_seconds=0.01,
        max_record_bytes=10_000,
        commit_interval_seconds=3600,
        top_features=2,
        shutdown_timeout_seconds=5,
    )
    pipeline = build_pipeline(
        PipelineConfig(**{**defaults, **config}),
        consumer,
        producer,
        scorer,
        Threshold(scorer.metadata.threshold),
        metrics or WorkerMetrics(),
        HealthState(60),
        clock=clock,
    )
    pipeline.subscribe()
    return pipeline, consumer, producer, log


def run_once(pipeline, seconds=0.3):
    pipeline.run(threading.Event(), max_seconds=seconds)
