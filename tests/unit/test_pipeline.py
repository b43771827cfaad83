"""The commit protocol with scripted clients: outputs acknowledged before offsets are committed."""

import json
import threading

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError

from tests.helpers import record, write_distance_bundle
from worker.exceptions import DeliveryError
from worker.health import HealthState
from worker.messages import Message
from worker.metrics import WorkerMetrics
from worker.pipeline import Pipeline, PipelineConfig
from worker.scoring import Scorer
from worker.threshold import Threshold


class FakeFuture:
    def __init__(self):
        self.callbacks, self.errbacks = [], []

    def add_callback(self, fn, *args):
        self.callbacks.append((fn, args))

    def add_errback(self, fn, *args):
        self.errbacks.append((fn, args))


class FakeProducer:
    def __init__(self, log):
        self.log, self.sent, self._pending = log, [], []
        self.fail_with = None

    def send(self, topic, key=None, value=None, headers=None):
        future = FakeFuture()
        self.sent.append((topic, key, value, headers))
        self._pending.append(future)
        return future

    def flush(self, timeout=None):
        self.log.append("flush")
        for future in self._pending:
            if self.fail_with is None:
                for fn, args in future.callbacks:
                    fn(*args, object())
            else:
                for fn, args in future.errbacks:
                    fn(*args, self.fail_with)
        self._pending = []


class FakeConsumer:
    def __init__(self, log, batches):
        self.log, self.batches = log, list(batches)
        self.commits = []
        self.listener = None

    def subscribe(self, topics, listener=None):
        self.listener = listener
        listener.on_partitions_assigned({TopicPartition("in", 0), TopicPartition("in", 1)})

    def poll(self, timeout_ms=0, max_records=None):
        return self.batches.pop(0) if self.batches else {}

    def commit(self, offsets):
        self.log.append("commit")
        self.commits.append({(tp.topic, tp.partition): om.offset for tp, om in offsets.items()})

    def highwater(self, tp):
        return 10


def messages(partition, values, start=0):
    return [Message("in", partition, start + i, 1_000, None, v) for i, v in enumerate(values)]


def make_pipeline(tmp_path, batches, **config):
    write_distance_bundle(tmp_path)
    log = []
    consumer, producer = FakeConsumer(log, batches), FakeProducer(log)
    defaults = dict(
        input_topic="in",
        alert_topic="alerts",
        dlq_topic="dlq",
        batch_max_records=100,
        batch_max_wait_seconds=0.01,
        max_record_bytes=10_000,
        commit_interval_seconds=3600,
        top_features=2,
        flush_timeout_seconds=5,
    )
    pipeline = Pipeline(
        PipelineConfig(**{**defaults, **config}),
        consumer,
        producer,
        Scorer.load(tmp_path, "cpu"),
        Threshold(4.0),
        WorkerMetrics(),
        HealthState(60),
    )
    pipeline.subscribe()
    return pipeline, consumer, producer, log


def run_once(pipeline):
    stop = threading.Event()
    pipeline.run(stop, max_seconds=0.3)


def test_scores_alerts_dead_letters_then_flushes_before_committing(tmp_path):
    batch = {
        TopicPartition("in", 0): messages(0, [record([0, 0, 0, 0]), record([5, 5, 5, 5], id="x")]),
        TopicPartition("in", 1): messages(1, [b"garbage"], start=7),
    }
    pipeline, consumer, producer, log = make_pipeline(tmp_path, [batch])
    run_once(pipeline)

    topics = [s[0] for s in producer.sent]
    assert sorted(topics) == ["alerts", "dlq"]
    alert = json.loads(next(s for s in producer.sent if s[0] == "alerts")[2])
    assert alert["id"] == "x" and alert["source"] == {"topic": "in", "partition": 0, "offset": 1}
    dead = next(s for s in producer.sent if s[0] == "dlq")
    assert dead[2] == b"garbage" and dict(dead[3])["error.reason"] == b"invalid_json"

    assert log == ["flush", "commit"]
    assert consumer.commits == [{("in", 0): 2, ("in", 1): 8}]
    registry = pipeline.metrics.registry
    assert registry.get_sample_value("anomaly_records_consumed_total") == 3
    assert (
        registry.get_sample_value("anomaly_records_invalid_total", {"reason": "invalid_json"}) == 1
    )
    assert registry.get_sample_value("anomaly_alerts_total") == 1
    assert registry.get_sample_value("anomaly_end_to_end_latency_seconds_count") == 1
    assert registry.get_sample_value("anomaly_score_ratio_count") == 2
    assert registry.get_sample_value("anomaly_consumer_lag", {"partition": "0"}) == 8


def test_an_unacknowledged_output_stops_before_any_commit(tmp_path):
    batch = {TopicPartition("in", 0): messages(0, [record([9, 9, 9, 9])])}
    pipeline, consumer, producer, _ = make_pipeline(tmp_path, [batch])
    producer.fail_with = KafkaTimeoutError("no ack")
    with pytest.raises(DeliveryError, match="not acknowledged"):
        run_once(pipeline)
    assert consumer.commits == []
    # Closing the consumer afterwards revokes the partitions: still nothing may be committed.
    producer.fail_with = None
    consumer.listener.on_partitions_revoked({TopicPartition("in", 0)})
    pipeline.commit()
    assert consumer.commits == []


def test_revocation_finishes_the_batch_in_hand_and_commits(tmp_path):
    pipeline, consumer, producer, log = make_pipeline(tmp_path, [], batch_max_wait_seconds=60)
    # Records polled into the batch, then a rebalance revokes the partition.
    pipeline._pending.extend(messages(0, [record([5, 5, 5, 5])] * 3))
    pipeline._pending_last[("in", 0)] = 2
    consumer.listener.on_partitions_revoked({TopicPartition("in", 0)})
    assert len(producer.sent) == 3
    assert log == ["flush", "commit"] and consumer.commits == [{("in", 0): 3}]
