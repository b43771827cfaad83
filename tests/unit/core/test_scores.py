"""The scores topic's batch form: the same per-record facts as one message per record, in
fewer messages, none over the produce limit, under the same guarantees."""

import json

from tests.fakes import LogConsumer, chunk, make_pipeline, messages, run_once
from tests.helpers import record
from worker.core.scores import expand_scores
from worker.observe.metrics import WorkerMetrics


def scores_of(producer):
    return [(key, value) for topic, key, value, _ in producer.sent if topic == "scores"]


def a_batch():
    return chunk(
        messages(0, [record([0, 0, 0, 0], id="calm", entity="h1"), b"garbage"]),
        messages(1, [record([5, 5, 5, 5], id="hot"), record([1, 0, 0, 0], entity="h2")], start=3),
    )


def test_a_batch_message_per_partition_says_what_the_record_messages_say(tmp_path):
    batch = a_batch()  # the same messages (and Kafka timestamps) both ways
    per_record, _, records_producer, _ = make_pipeline(
        tmp_path / "r", [batch], scores_topic="scores"
    )
    batched, _, batch_producer, log = make_pipeline(
        tmp_path / "b", [batch], scores_topic="scores", scores_format="batch"
    )
    run_once(per_record)
    run_once(batched)
    messages_sent = scores_of(batch_producer)
    assert [key for key, _ in messages_sent] == [b"in:0", b"in:1"]
    expanded = [s for _, value in messages_sent for s in expand_scores(value)]
    singles = [json.loads(value) for _, value in scores_of(records_producer)]
    assert len(singles) == 3 and expanded == singles  # the dead letter has no score either way
    assert [s["source"]["offset"] for s in expanded] == [0, 3, 4]
    assert expanded[2]["id"] == "in-1-4" and expanded[1]["alert"] is True
    assert log == ["flush", "commit"]  # acknowledged before the commit, as per record


def test_batches_split_under_the_produce_limit_and_a_record_too_large_alone_is_counted(tmp_path):
    rows = [record([0, 0, 0, 0], id=f"r{i:03d}", entity="host") for i in range(200)]
    rows[17] = record([0, 0, 0, 0], id="x" * 2_420)  # a valid input; its score alone > 2,500
    assert len(rows[17]) < 2_500
    metrics = WorkerMetrics()
    pipeline, _, producer, _ = make_pipeline(
        tmp_path,
        [chunk(messages(0, rows))],
        scores_topic="scores",
        scores_format="batch",
        max_record_bytes=2_500,
        metrics=metrics,
    )
    run_once(pipeline)
    sent = scores_of(producer)
    assert len(sent) > 2 and all(len(key) + len(value) <= 2_500 for key, value in sent)
    offsets = [s["source"]["offset"] for _, value in sent for s in expand_scores(value)]
    assert offsets == [i for i in range(200) if i != 17]  # each once, in order
    assert metrics.scores_dropped._value.get() == 1


def test_batches_go_in_the_transaction_with_exactly_once(tmp_path):
    from tests.fakes import TransactionalProducer

    records = {("in", 0): messages(0, [record([0, 0, 0, 0], id=f"r{i}") for i in range(3)])}
    pipeline, _, producer, _ = make_pipeline(
        tmp_path,
        [],
        consumer=lambda log: LogConsumer(log, records),
        producer=TransactionalProducer,
        processing_guarantee="exactly_once",
        scores_topic="scores",
        scores_format="batch",
    )
    run_once(pipeline)
    ((offsets, _, sent),) = producer.transactions
    assert offsets == {("in", 0): 3} and [topic for topic, _ in sent] == ["scores"]
    ((_, value),) = sent
    assert [s["id"] for s in expand_scores(value)] == ["r0", "r1", "r2"]
