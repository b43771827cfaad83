"""Two batches overlap: batch N's model call runs on a helper thread while the loop polls and
decodes batch N+1. What must not change: outputs, decisions, offsets and their order; every
commit point, rebalance and reload sees batch N finished."""

from __future__ import annotations

import json
import threading
import time

import pytest

import worker.processing
from tests.fakes import FakeConsumer, LogConsumer, TransactionalProducer, chunk, make_pipeline
from tests.fakes import messages as make_messages
from tests.helpers import NAMES, record, write_distance_bundle
from worker.contract.scoring import Scorer
from worker.processing import SCORING_THREAD

P0 = ("in", 0)


@pytest.fixture(autouse=True)
def overlap_small_batches(request, monkeypatch):
    """These tests' batches are a few records: let them overlap as a backlog's would."""
    if "inline" not in request.node.name:
        monkeypatch.setattr(worker.processing, "OVERLAP_MIN_RECORDS", 1)


def batches_of(values_per_batch):
    """Chunks of partition 0, offsets running on from one to the next."""
    out, start = [], 0
    for values in values_per_batch:
        out.append(chunk(make_messages(0, values, start=start)))
        start += len(values)
    return out


def mixed_batches(count=6, size=5):
    return batches_of(
        [
            [
                record([(b * size + i) % 4 * 1.5] * 4, id=f"r{b}-{i}", entity=f"e{i % 2}")
                for i in range(size)
            ]
            for b in range(count)
        ]
    )


def alerted(producer):
    return [
        (json.loads(v)["id"], json.loads(v)["score"])
        for t, _, v, _ in producer.sent
        if t == "alerts"
    ]


class CountingConsumer(FakeConsumer):
    """Counts polls, so a model call can see whether the loop polled while it ran."""

    def __init__(self, log, batches):
        super().__init__(log, batches)
        self.polls = 0

    def poll(self, timeout, max_records):
        self.polls += 1
        return super().poll(timeout, max_records)


def test_the_next_batch_is_polled_while_the_model_scores_and_outputs_do_not_change(tmp_path):
    batches = mixed_batches()
    pipeline, consumer, producer, _ = make_pipeline(
        tmp_path / "a",
        [],
        consumer=lambda log: CountingConsumer(log, batches),
        batch_max_records=5,
        threshold_mode="entity_recent",
        recent_window_records=64,
        recent_warmup_records=4,
    )
    real_score, real_begin = pipeline.model.score, pipeline.processor.begin
    polls_at_start, overlapped, threads = [], [], set()

    def begin(*args):
        polls_at_start.append(consumer.polls)
        return real_begin(*args)

    def score(decoded):
        """Waits (at most 1 s) for the loop to poll: it cannot while it waits for this call."""
        threads.add(threading.current_thread().name)
        polls, deadline = polls_at_start[len(overlapped)], time.monotonic() + 1.0
        while consumer.polls == polls and time.monotonic() < deadline:
            time.sleep(0.001)
        overlapped.append(consumer.polls > polls)
        return real_score(decoded)

    pipeline.processor.begin, pipeline.model.score = begin, score
    pipeline.run(threading.Event(), max_seconds=2.0)
    assert overlapped == [True] * len(batches)
    assert all(name.startswith(SCORING_THREAD) for name in threads)

    # The same batches one at a time, nothing overlapping: the same alerts, in the same order.
    one_by_one, _, reference, _ = make_pipeline(
        tmp_path / "b",
        mixed_batches(),
        batch_max_records=5,
        threshold_mode="entity_recent",
        recent_window_records=64,
        recent_warmup_records=4,
    )
    for _ in batches:
        one_by_one._collect(threading.Event())
        one_by_one._process_batch()
    assert alerted(producer) == alerted(reference) and len(alerted(reference)) > 3
    assert consumer.commits[-1] == {P0: 30}


class RevokingConsumer(FakeConsumer):
    """Revokes partition 0 inside its second poll, as librdkafka runs rebalance callbacks."""

    def poll(self, timeout, max_records):
        if not self.batches and self.hooks is not None and not self.log:
            self.log.append("revoke")
            self.revoke({P0})
            return None
        return super().poll(timeout, max_records)


def test_a_rebalance_while_a_batch_is_in_flight_finishes_it_before_committing(tmp_path):
    batch = chunk(make_messages(0, [record([5, 5, 5, 5], id=f"x{i}") for i in range(3)]))
    pipeline, consumer, producer, log = make_pipeline(
        tmp_path, [], consumer=lambda log: RevokingConsumer(log, [batch]), batch_max_records=3
    )
    real_score = pipeline.model.score
    sent_when_scored = []

    def slow_score(decoded):
        time.sleep(0.2)  # still running when the next poll revokes the partition
        sent_when_scored.append(len(producer.sent))
        return real_score(decoded)

    pipeline.model.score = slow_score
    pipeline.run(threading.Event(), max_seconds=0.6)
    assert sent_when_scored == [0]  # the revoke came while the model call ran...
    assert log[:3] == ["revoke", "flush", "commit"]
    assert consumer.commits[0] == {P0: 3}  # ...and its batch was finished and committed first
    assert [json.loads(v)["id"] for _, _, v, _ in producer.sent] == ["x0", "x1", "x2"]


class EvictingConsumer(LogConsumer):
    """The group evicts this worker inside its second poll."""

    def poll(self, timeout, max_records):
        if self.positions[P0] > 0 and "lost" not in self.log:
            self.log.append("lost")
            self.hooks.lost({P0})
            return None
        return super().poll(timeout, max_records)


def test_a_batch_in_flight_when_the_partition_is_lost_goes_out_in_the_aborted_transaction(
    tmp_path,
):
    """Its outputs belong with the open transaction the eviction aborts: produced after the
    abort, they would open a new one and commit beside the new owner's."""
    log_of = {P0: make_messages(0, [record([5, 5, 5, 5], id=f"x{i}") for i in range(3)])}
    pipeline, _consumer, producer, log = make_pipeline(
        tmp_path,
        [],
        consumer=lambda log: EvictingConsumer(log, log_of),
        producer=TransactionalProducer,
        processing_guarantee="exactly_once",
        batch_max_records=3,
    )
    real_score = pipeline.model.score

    def slow_score(decoded):
        time.sleep(0.2)
        return real_score(decoded)

    pipeline.model.score = slow_score
    pipeline.run(threading.Event(), max_seconds=0.6)
    assert "lost" in log and "abort" in log
    assert [len(sent) for sent in producer.aborted] == [3]
    assert all(sent == [] for _, _, sent in producer.transactions)


class Promotion:
    """A model watcher whose new model appears while ``arm`` has been called."""

    def __init__(self, scorer):
        self.scorer, self.armed = scorer, False

    def take(self):
        if self.armed:
            self.armed, scorer, self.scorer = False, self.scorer, None
            return scorer
        return None


def test_a_model_promoted_while_a_batch_is_in_flight_scores_the_next_batch_on_its_features(
    tmp_path,
):
    """The next batch was decoded against the old model's features; it is decoded again."""
    write_distance_bundle(tmp_path / "v2", names=(*NAMES, "gpu"), version="test-v2")
    first = [record(dict.fromkeys(NAMES, 0.0), id="old")]
    second = [record({**dict.fromkeys(NAMES, 0.0), "gpu": 10.0}, id="new")]
    pipeline, _, producer, _ = make_pipeline(
        tmp_path, batches_of([first, second]), batch_max_records=1
    )
    promotion = Promotion(Scorer.load(tmp_path / "v2", "cpu"))
    pipeline.model.watcher = promotion
    real_score = pipeline.model.score

    def score(decoded):
        if pipeline.model.scorer.metadata.version == "test-v1":
            promotion.armed = True  # promoted while the first batch is scored
            time.sleep(0.1)  # the second batch is polled and decoded meanwhile
        return real_score(decoded)

    pipeline.model.score = score
    pipeline.run(threading.Event(), max_seconds=0.5)
    assert pipeline.model.scorer.metadata.version == "test-v2"
    (alert,) = [json.loads(v) for t, _, v, _ in producer.sent if t == "alerts"]
    assert alert["id"] == "new" and alert["model_version"] == "test-v2"
    assert alert["score"] == pytest.approx(20.0)  # 10^2 / 5 features: gpu was scored


def test_a_failed_model_call_stops_the_worker_and_commits_nothing(tmp_path):
    batch = chunk(make_messages(0, [record([5, 5, 5, 5])] * 2))
    pipeline, consumer, producer, _ = make_pipeline(tmp_path, [batch], batch_max_records=2)

    def broken(decoded):
        raise RuntimeError("the model call failed")

    pipeline.model.score = broken
    with pytest.raises(RuntimeError, match="the model call failed"):
        pipeline.run(threading.Event(), max_seconds=0.5)
    assert producer.sent == [] and consumer.commits == []


def test_small_batches_are_scored_inline_and_their_alerts_sent_before_the_next_poll(tmp_path):
    """Below OVERLAP_MIN_RECORDS the loop has time to spare: handing the model call to the
    helper thread would only add GIL hand-overs to the alerts' latency."""
    batches = mixed_batches(count=3)
    pipeline, consumer, producer, _ = make_pipeline(
        tmp_path, [], consumer=lambda log: CountingConsumer(log, batches), batch_max_records=5
    )
    real_score, seen = pipeline.model.score, []

    def score(decoded):
        seen.append((threading.current_thread().name, consumer.polls))
        return real_score(decoded)

    real_poll, sent_at_poll = consumer.poll, []

    def poll(timeout, max_records):
        sent_at_poll.append(len(producer.sent))
        return real_poll(timeout, max_records)

    pipeline.model.score, consumer.poll = score, poll
    pipeline.run(threading.Event(), max_seconds=0.3)
    assert [name for name, _ in seen] == ["MainThread"] * 3
    # Batch k (polled by poll k) has its outputs out before poll k + 1.
    alerts_by_batch = [
        [a for a in alerted_ids(producer) if a.startswith(f"r{b}-")] for b in range(3)
    ]
    for b, (_, polls) in enumerate(seen):
        assert sent_at_poll[polls] >= sum(len(x) for x in alerts_by_batch[: b + 1])
    assert sum(map(len, alerts_by_batch)) > 0


def alerted_ids(producer):
    return [json.loads(v)["id"] for t, _, v, _ in producer.sent if t == "alerts"]
