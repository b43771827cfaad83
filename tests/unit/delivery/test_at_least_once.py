"""The at-least-once commit protocol with scripted clients: outputs acknowledged before
offsets are committed."""

import json
import threading
import time

import pytest

from tests.fakes import FlakyConsumer, LogConsumer, chunk, make_pipeline, messages, run_once
from tests.helpers import record
from worker.delivery.exceptions import DeliveryError
from worker.kafka.ports import TransientError, TransportError


def test_scores_alerts_dead_letters_then_flushes_before_committing(tmp_path):
    batch = chunk(
        messages(0, [record([0, 0, 0, 0]), record([5, 5, 5, 5], id="x")]),
        messages(1, [b"garbage"], start=7),
    )
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
    batch = chunk(messages(0, [record([9, 9, 9, 9])]))
    pipeline, consumer, producer, _ = make_pipeline(tmp_path, [batch])
    producer.fail_with = TransportError("no ack")
    with pytest.raises(DeliveryError, match="not acknowledged"):
        run_once(pipeline)
    assert consumer.commits == []
    # Closing the consumer afterwards revokes the partitions: still nothing may be committed.
    producer.fail_with = None
    consumer.revoke({("in", 0)})
    pipeline.commit()
    assert consumer.commits == []


def test_revocation_finishes_the_batch_in_hand_and_commits(tmp_path):
    pipeline, consumer, producer, log = make_pipeline(tmp_path, [], batch_max_wait_seconds=60)
    # Records polled into the batch, then a rebalance revokes the partition.
    pipeline.add(chunk(messages(0, [record([5, 5, 5, 5])] * 3)))
    consumer.revoke({("in", 0)})
    assert len(producer.sent) == 3
    assert log == ["flush", "commit"] and consumer.commits == [{("in", 0): 3}]


def test_a_network_cut_while_polling_is_ridden_out_and_readiness_follows(tmp_path):
    batch = chunk(messages(0, [record([5, 5, 5, 5], id="after")]))
    failures = [TransientError("poll: socket disconnected"), TransientError("poll: node not ready")]
    pipeline, flaky, producer, _log = make_pipeline(
        tmp_path, [], consumer=lambda log: FlakyConsumer(log, [batch], failures)
    )
    seen = []
    real_trouble = pipeline.link.trouble

    def trouble(what):
        real_trouble(what)
        seen.append(pipeline.health.ready)

    pipeline.link.trouble = trouble
    pipeline.run(threading.Event(), max_seconds=1.5)
    assert seen == [False, False]  # /readyz said 503 while cut off
    assert pipeline.health.ready  # and 200 once polls succeed again
    assert [s[0] for s in producer.sent] == ["alerts"]
    assert flaky.commits == [{("in", 0): 1}]


def test_a_fatal_error_abandons_the_batch_and_close_commits_nothing(tmp_path):
    batch = chunk(messages(0, [record([5, 5, 5, 5])] * 2))
    pipeline, consumer, producer, log = make_pipeline(tmp_path, [batch], batch_max_records=1000)
    consumer.poll = lambda timeout, max_records: (_ for _ in ()).throw(
        TransportError("poll: IllegalStateError: not transient")
    )
    pipeline.add(chunk(messages(0, [record([5, 5, 5, 5])] * 2)))
    with pytest.raises(TransportError):
        run_once(pipeline)
    # consumer.close() then runs the revoke hooks: they must do nothing.
    consumer.revoke({("in", 0)})
    assert producer.sent == [] and consumer.commits == [] and "flush" not in log


def test_a_flush_that_times_out_postpones_the_commit_instead_of_stopping(tmp_path):
    batch = chunk(messages(0, [record([5, 5, 5, 5])]))
    pipeline, consumer, producer, _log = make_pipeline(tmp_path, [batch])
    real_flush = producer.flush
    calls = []

    def flush(timeout):
        calls.append(timeout)
        if len(calls) == 1:
            raise TransientError("flush: 1 output(s) not acknowledged in 5s")
        real_flush(timeout)

    producer.flush = flush
    run_once(pipeline)
    assert consumer.commits == [{("in", 0): 1}]  # committed at a later commit point
    assert calls[0] <= 5


def test_a_failure_inside_the_revoke_listener_is_raised_from_the_main_loop(tmp_path):
    batch = chunk(messages(0, [record([9, 9, 9, 9])]))
    pipeline, consumer, producer, _ = make_pipeline(tmp_path, [batch])
    run_once(pipeline)  # processed and committed
    pipeline.add(chunk(messages(0, [record([9, 9, 9, 9])], start=1)))
    producer.fail_with = TransportError("expired")
    consumer.revoke({("in", 0)})
    with pytest.raises(DeliveryError):
        run_once(pipeline)
    assert consumer.commits == [{("in", 0): 1}]


def test_outputs_that_cannot_fit_a_request_become_cut_dead_letters(tmp_path):
    big = record([0, 0, 0, 0], pad="x" * 30_000)
    # 10 KB of UTF-8 in, but 30 KB once the alert's JSON escapes it as \u00e9.
    huge_id = json.dumps({"features": [9, 9, 9, 9], "id": "é" * 5_000}, ensure_ascii=False)
    huge_id = huge_id.encode()
    batch = chunk(messages(0, [big, huge_id]))
    pipeline, consumer, producer, _ = make_pipeline(tmp_path, [batch], max_record_bytes=20_000)
    run_once(pipeline)
    letters = [s for s in producer.sent if s[0] == "dlq"]
    reasons = [dict(h)["error.reason"] for _, _, _, h in letters]
    assert reasons == [b"oversized", b"alert_too_large"]
    for _, key, value, headers in letters:
        assert len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers) <= (
            20_000
        )
    assert dict(letters[0][3])["source.value.size"] == str(len(big)).encode()
    assert dict(letters[0][3])["error.truncated"] == b"value"
    assert letters[0][2] == big[: len(letters[0][2])]
    assert consumer.commits == [{("in", 0): 2}]


def test_non_finite_scores_alert_with_valid_json(tmp_path):
    # float32 squares overflow: the score is inf; the alert must still be RFC 8259 JSON.
    batch = chunk(messages(0, [record([3e38, 0, 0, 0], id="inf")]))
    pipeline, _consumer, producer, _ = make_pipeline(tmp_path, [batch])
    run_once(pipeline)
    ((topic, _, value, _),) = producer.sent
    assert topic == "alerts" and b"Infinity" not in value and b"NaN" not in value
    body = json.loads(value, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert body["id"] == "inf" and body["score"] is None and body["score_ratio"] is None


def test_dead_letters_log_one_line_per_reason_per_interval_and_count_every_one(tmp_path, caplog):
    now = [0.0]
    batch = messages(0, [b"garbage"] * 100 + [record([1, 2, 3])])
    pipeline, _consumer, producer, _ = make_pipeline(tmp_path, [], clock=lambda: now[0])
    pipeline.process(batch, [m.value for m in batch])
    lines = [r.getMessage() for r in caplog.records if "dead letter" in r.getMessage()]
    assert len(lines) == 2  # one invalid_json, one wrong_feature_count
    assert lines[0].startswith("dead letter in[0]@0: invalid_json")
    assert len([s for s in producer.sent if s[0] == "dlq"]) == 101
    registry = pipeline.metrics.registry
    assert (
        registry.get_sample_value("anomaly_records_invalid_total", {"reason": "invalid_json"})
        == 100
    )
    now[0] = 11.0
    later = messages(0, [b"garbage"], start=200)
    pipeline.process(later, [m.value for m in later])
    last = [r.getMessage() for r in caplog.records if "dead letter" in r.getMessage()][-1]
    assert last.startswith("dead letter in[0]@200: invalid_json") and "99 more invalid_json" in last


def test_alerts_of_implausible_event_times_are_sent_but_kept_out_of_the_latency(tmp_path, caplog):
    """A 1970 or year-1 ts once added 1.8e9 or 6.4e10 s to the latency histogram's sum, and
    milliseconds sent as seconds went unnoticed."""
    now = time.time()
    batch = chunk(
        messages(
            0,
            [
                record([5, 5, 5, 5], id="now", ts=now),
                record([5, 5, 5, 5], id="1970", ts=0),
                record([5, 5, 5, 5], id="year-1", ts="0001-01-01T00:00:00Z"),
                record([5, 5, 5, 5], id="ms", ts=now * 1000),
            ],
        )
    )
    pipeline, _consumer, producer, _ = make_pipeline(tmp_path, [batch])
    run_once(pipeline)
    assert sorted(json.loads(s[2])["id"] for s in producer.sent) == ["1970", "ms", "now", "year-1"]
    sample = pipeline.metrics.registry.get_sample_value
    assert sample("anomaly_end_to_end_latency_seconds_count") == 1
    assert sample("anomaly_end_to_end_latency_seconds_sum") < 60
    assert sample("anomaly_event_time_outside_range_total", {"side": "past"}) == 2
    assert sample("anomaly_event_time_outside_range_total", {"side": "future"}) == 1
    lines = [r.getMessage() for r in caplog.records if "event time of" in r.getMessage()]
    assert any("in the future (milliseconds sent as seconds?)" in line for line in lines), lines
    assert any("in[0]@1" in line and "in the past" in line for line in lines), lines


class PausingConsumer(FlakyConsumer):
    """Scripted chunks; before the chunk at ``pause_before``, the clock jumps (a SIGSTOP)."""

    def __init__(self, log, batches, clock, pause_before, seconds):
        super().__init__(log, batches, [])
        self.clock, self.pause_before, self.seconds, self.polls = clock, pause_before, seconds, 0

    def poll(self, timeout, max_records):
        self.polls += 1
        if self.polls == self.pause_before:
            self.clock[0] += self.seconds
        else:
            self.clock[0] += 0.05
        return super().poll(timeout, max_records)


def test_a_batch_polled_after_a_pause_longer_than_the_session_is_held_until_the_group_speaks(
    tmp_path, caplog
):
    """SIGSTOP for 40 s with a second worker in the group: the records the client had
    buffered belong to the other worker by now; they must not be scored here (they were:
    248 duplicate alerts of 988)."""
    now = [0.0]
    first = chunk(messages(0, [record([5, 5, 5, 5], id="before")]))
    buffered = chunk(messages(1, [record([5, 5, 5, 5], id=f"buffered{i}") for i in range(5)]))
    pipeline, consumer, producer, _ = make_pipeline(
        tmp_path,
        [],
        consumer=lambda log: PausingConsumer(log, [first, None, buffered], now, 3, 40.0),
        clock=lambda: now[0],
        commit_interval_seconds=0.01,
    )
    stop = threading.Event()
    for _ in range(4):  # loop passes: the first batch, the pause, then polls while holding
        pipeline._collect(stop)
        pipeline._process_batch()
    assert [json.loads(s[2])["id"] for s in producer.sent] == ["before"]  # held
    assert len(pipeline.batch) == 5
    assert any("holding the records in hand" in r.getMessage() for r in caplog.records)
    consumer.hooks.lost({("in", 1)})  # the client rejoins: partition 1 is another's now
    assert len(pipeline.batch) == 0 and not pipeline.link.holding()
    pipeline._process_batch()
    assert [json.loads(s[2])["id"] for s in producer.sent] == ["before"]


def test_without_a_rebalance_the_held_batch_is_processed_a_session_later(tmp_path):
    now = [0.0]
    buffered = chunk(messages(1, [record([5, 5, 5, 5], id="kept")]))
    pipeline, _consumer, producer, _ = make_pipeline(
        tmp_path,
        [],
        consumer=lambda log: PausingConsumer(
            log, [chunk(messages(0, [record([0, 0, 0, 0])])), None, buffered], now, 3, 40.0
        ),
        clock=lambda: now[0],
    )
    stop = threading.Event()
    pipeline._collect(stop)
    pipeline._process_batch()
    pipeline._collect(stop)
    pipeline._process_batch()
    assert producer.sent == [] and len(pipeline.batch) == 1  # held
    now[0] += pipeline.link.session_timeout_seconds  # no rebalance came: still a member
    pipeline._process_batch()
    assert [json.loads(s[2])["id"] for s in producer.sent] == ["kept"]


def test_an_input_topic_deleted_and_created_again_is_read_again_from_its_start(tmp_path, caplog):
    """kafka-python resumed a recreated topic at its old positions: 1,996 of 2,000 new records
    skipped, silently. A new topic id now resets the partitions per the policy."""
    old_topic = chunk(messages(0, [record([0, 0, 0, 0])] * 3))
    held = chunk(messages(1, [record([5, 5, 5, 5], id="old-incarnation")]))
    pipeline, consumer, producer, _ = make_pipeline(
        tmp_path, [old_topic, None, held], batch_max_wait_seconds=60
    )
    consumer.topic_ids = {"in": "id-1"}
    stop = threading.Event()
    pipeline._collect(stop)
    pipeline._process_batch()
    pipeline.ownership.watch_topic()
    pipeline._collect(stop)  # a record polled, not processed yet...
    consumer.topic_ids = {"in": "id-2"}  # ...when the topic is recreated
    pipeline.ownership.watch_topic()
    assert consumer.resets == [[("in", 0), ("in", 1)]]
    assert len(pipeline.batch) == 0 and pipeline.committer.offsets.to_commit() == {}
    sample = pipeline.metrics.registry.get_sample_value
    assert sample("anomaly_input_topic_recreated_total") == 1
    (line,) = [r.getMessage() for r in caplog.records if "created again" in r.getMessage()]
    assert "id-1 -> id-2" in line and "1 records of the old topic in hand dropped" in line
    pipeline.ownership.watch_topic()
    assert len(consumer.resets) == 1  # once per recreation
    assert producer.sent == []


def test_a_broker_that_forgot_the_producer_gets_a_new_one_and_the_records_read_again(
    tmp_path, caplog
):
    """A broker restarted empty answers UnknownProducerIdError: the worker exited 1, and only
    a supervisor's restart recovered. Now it renews the producer and re-reads since the last
    commit: nothing lost, nothing committed past the lost outputs."""
    from worker.kafka.ports import ProducerStateLost

    records = messages(0, [record([5, 5, 5, 5], id=f"r{i}") for i in range(3)], start=10)
    pipeline, consumer, producer, log = make_pipeline(
        tmp_path, [], consumer=lambda log: LogConsumer(log, {("in", 0): records})
    )
    producer.fail_with = ProducerStateLost("delivery: UnknownProducerIdError")
    run_once(pipeline)
    assert log[:3] == ["flush", "renew", "flush"] and consumer.seeks == [(("in", 0), 10)]
    assert consumer.commits == [{("in", 0): 13}]  # once the records were scored again
    alerted = [json.loads(s[2])["id"] for s in producer.sent]
    assert alerted == ["r0", "r1", "r2"] * 2  # sent again by the new producer
    sample = pipeline.metrics.registry.get_sample_value
    assert sample("anomaly_producer_renewals_total") == 1
    (line,) = [r.getMessage() for r in caplog.records if "no longer knows" in r.getMessage()]
    assert "3 output(s) reported lost in flight" in line
    assert "read again from their last commit" in line


def test_a_broker_refusing_every_new_producer_stops_the_worker(tmp_path):
    from worker.delivery.checkpoint import MAX_RENEWALS_IN_A_ROW
    from worker.kafka.ports import ProducerStateLost

    records = messages(0, [record([5, 5, 5, 5])], start=0)
    pipeline, consumer, producer, log = make_pipeline(
        tmp_path, [], consumer=lambda log: LogConsumer(log, {("in", 0): records})
    )
    lost = ProducerStateLost("delivery: UnknownProducerIdError")
    producer.renew = lambda: (log.append("renew"), setattr(producer, "_pending", []))
    producer.fail_with = lost
    with pytest.raises(DeliveryError, match=f"{MAX_RENEWALS_IN_A_ROW} new producers in a row"):
        run_once(pipeline, seconds=3)
    assert log.count("renew") == MAX_RENEWALS_IN_A_ROW - 1 and consumer.commits == []


def test_every_scored_record_has_its_score_on_the_scores_topic(tmp_path):
    batch = chunk(
        messages(0, [record([0, 0, 0, 0], id="calm", entity="h1"), b"garbage"]),
        messages(1, [record([5, 5, 5, 5], id="hot")], start=3),
    )
    pipeline, _consumer, producer, log = make_pipeline(tmp_path, [batch], scores_topic="scores")
    run_once(pipeline)
    by_topic = {}
    for topic, key, value, _ in producer.sent:
        by_topic.setdefault(topic, []).append((key, json.loads(value) if topic != "dlq" else None))
    assert sorted(by_topic) == ["alerts", "dlq", "scores"]
    scores = {body["id"]: (key, body) for key, body in by_topic["scores"]}
    assert sorted(scores) == ["calm", "hot"]  # the dead letter has no score
    key, calm = scores["calm"]
    assert key == b"h1" and calm["alert"] is False and calm["score"] == 0.0
    assert calm["threshold"] == 4.0 and calm["source"] == {
        "topic": "in",
        "partition": 0,
        "offset": 0,
    }
    assert scores["hot"][1]["alert"] is True and scores["hot"][1]["score"] == 25.0
    assert log == ["flush", "commit"]  # the scores were acknowledged before the commit


def test_a_refused_score_stops_before_any_commit(tmp_path, caplog):
    # No alert in the batch: only its scores are outputs, and one refusal holds the offsets.
    batch = chunk(messages(0, [record([0, 0, 0, 0], id=f"r{i}") for i in range(5)], start=7))
    pipeline, consumer, producer, _ = make_pipeline(tmp_path, [batch], scores_topic="scores")
    producer.fail_with = TransportError("no ack")
    with pytest.raises(DeliveryError, match="not acknowledged"):
        run_once(pipeline)
    assert consumer.commits == [] and len(producer.sent) == 5
    assert "in[0]@7 (a score of its batch)" in caplog.text


def test_scores_go_in_the_transaction_with_exactly_once(tmp_path):
    from tests.fakes import TransactionalProducer

    records = {("in", 0): messages(0, [record([0, 0, 0, 0], id=f"r{i}") for i in range(3)])}
    pipeline, _, producer, _ = make_pipeline(
        tmp_path,
        [],
        consumer=lambda log: LogConsumer(log, records),
        producer=TransactionalProducer,
        processing_guarantee="exactly_once",
        scores_topic="scores",
    )
    run_once(pipeline)
    ((offsets, _, sent),) = producer.transactions
    assert offsets == {("in", 0): 3} and [topic for topic, _ in sent] == ["scores"] * 3
