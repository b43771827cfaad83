"""The exactly-once commit protocol with scripted clients: one transaction per commit point."""

import json
import threading

import pytest

from tests.fakes import LogConsumer, TransactionalProducer, chunk, make_pipeline, messages
from tests.helpers import record
from worker.delivery.exceptions import DeliveryError
from worker.delivery.transactions import MAX_ABORTS_IN_A_ROW
from worker.kafka.ports import TransactionAbortable, TransientError, TransportError, fenced_message


def transactional_pipeline(tmp_path, partitions, **config):
    """A pipeline with exactly_once over ``partitions``: {partition: [messages]}."""
    return make_pipeline(
        tmp_path,
        [],
        consumer=lambda log: LogConsumer(log, partitions),
        producer=TransactionalProducer,
        processing_guarantee="exactly_once",
        **config,
    )


def run_once(pipeline, seconds=0.3):
    pipeline.run(threading.Event(), max_seconds=seconds)


def sample(pipeline, name, labels=None):
    return pipeline.metrics.registry.get_sample_value(name, labels or {})


def alerted(sent):
    return [json.loads(value)["id"] for topic, value in sent if topic == "alerts"]


P0, P1 = ("in", 0), ("in", 1)


def test_outputs_and_offsets_commit_in_one_transaction(tmp_path):
    partitions = {
        P0: messages(0, [record([0, 0, 0, 0]), record([5, 5, 5, 5], id="x")]),
        P1: messages(1, [b"garbage"], start=7),
    }
    pipeline, consumer, producer, log = transactional_pipeline(tmp_path, partitions)
    run_once(pipeline)
    assert log == ["begin", "commit_transaction"]
    ((offsets, group, sent),) = producer.transactions
    assert offsets == {P0: 2, P1: 8} and group == "generation-1"
    assert sorted(topic for topic, _ in sent) == ["alerts", "dlq"]
    assert consumer.commits == []  # the offsets went with the transaction, not through the group
    assert sample(pipeline, "anomaly_transactions_total", {"result": "committed"}) == 1
    # The alert became readable when its transaction committed: that is when it is observed.
    assert sample(pipeline, "anomaly_end_to_end_latency_seconds_count") == 1


def test_a_transaction_that_cannot_commit_is_aborted_and_its_records_read_again(tmp_path):
    partitions = {P0: messages(0, [record([5, 5, 5, 5], id="a")], start=10)}
    pipeline, consumer, producer, log = transactional_pipeline(tmp_path, partitions)
    producer.outcomes = [TransactionAbortable("TxnOffsetCommit: ILLEGAL_GENERATION")]
    run_once(pipeline)
    assert log == ["begin", "commit_transaction", "abort", "begin", "commit_transaction"]
    assert consumer.seeks == [(P0, 10)]  # nothing committed yet: from its first processed offset
    assert alerted(producer.aborted[0]) == ["a"]
    ((offsets, _, sent),) = producer.transactions
    assert offsets == {P0: 11} and alerted(sent) == ["a"]
    assert sample(pipeline, "anomaly_transactions_total", {"result": "aborted"}) == 1
    assert sample(pipeline, "anomaly_transactions_total", {"result": "committed"}) == 1
    assert sample(pipeline, "anomaly_end_to_end_latency_seconds_count") == 1  # not the aborted


def test_an_abort_rereads_from_the_last_committed_offset(tmp_path):
    pipeline, consumer, producer, _ = transactional_pipeline(
        tmp_path, {P0: messages(0, [record([0, 0, 0, 0])] * 2)}
    )
    run_once(pipeline)
    consumer.partitions[P0] += messages(0, [record([5, 5, 5, 5], id="b")], start=2)
    producer.outcomes = [TransactionAbortable("coordinator moved")]
    run_once(pipeline)
    assert consumer.seeks == [(P0, 2)]
    assert [offsets for offsets, _, _ in producer.transactions] == [{P0: 2}, {P0: 3}]


def test_an_unreachable_coordinator_is_waited_for_then_the_transaction_commits(tmp_path):
    partitions = {P0: messages(0, [record([5, 5, 5, 5], id="c")])}
    pipeline, _, producer, log = transactional_pipeline(tmp_path, partitions)
    producer.outcomes = [TransientError("EndTxn: coordinator not available")] * 2
    readiness = []
    real_trouble = pipeline.link.trouble

    def trouble(what):
        real_trouble(what)
        readiness.append(pipeline.health.ready)

    pipeline.link.trouble = trouble
    run_once(pipeline, seconds=1.0)
    assert log.count("commit_transaction") == 3 and "abort" not in log
    assert readiness == [False, False] and pipeline.health.ready
    assert len(producer.transactions) == 1


def test_a_commit_that_never_gets_through_aborts_and_stops_with_nothing_committed(tmp_path):
    pipeline, consumer, producer, log = transactional_pipeline(
        tmp_path,
        {P0: messages(0, [record([5, 5, 5, 5])])},
        delivery_timeout_seconds=0.5,
        connect_backoff_max_seconds=0.1,
    )
    producer.outcomes = [TransientError("EndTxn: request timed out")] * 10_000
    with pytest.raises(DeliveryError, match=r"did not commit within 0\.5s"):
        run_once(pipeline)
    assert log[-1] == "abort" and producer.transactions == [] and consumer.commits == []


def test_a_refused_output_aborts_and_stops(tmp_path):
    partitions = {P0: messages(0, [record([5, 5, 5, 5])])}
    pipeline, _, producer, log = transactional_pipeline(tmp_path, partitions)
    producer.fail_with = TransportError("delivery: MSG_SIZE_TOO_LARGE")
    producer.outcomes = [TransactionAbortable("a produce request failed")]
    with pytest.raises(DeliveryError, match="MSG_SIZE_TOO_LARGE"):
        run_once(pipeline)
    assert "abort" in log and producer.transactions == []


def test_the_same_records_aborting_again_and_again_stop_the_worker(tmp_path):
    partitions = {P0: messages(0, [record([5, 5, 5, 5])])}
    pipeline, _, producer, log = transactional_pipeline(tmp_path, partitions)
    producer.outcomes = [TransactionAbortable("always")] * MAX_ABORTS_IN_A_ROW
    with pytest.raises(DeliveryError, match=f"{MAX_ABORTS_IN_A_ROW} transactions aborted in a row"):
        run_once(pipeline, seconds=2.0)
    assert log.count("abort") == MAX_ABORTS_IN_A_ROW and producer.transactions == []


def test_a_fenced_producer_stops_the_worker_with_what_to_do(tmp_path):
    partitions = {P0: messages(0, [record([5, 5, 5, 5])])}
    pipeline, consumer, producer, log = transactional_pipeline(tmp_path, partitions)
    producer.outcomes = [TransportError(fenced_message("fraud-host", "EndTxn: PRODUCER_FENCED"))]
    with pytest.raises(TransportError, match="give each its own ANOMALY_TRANSACTIONAL_ID"):
        run_once(pipeline)
    assert log[-1] == "abort" and producer.transactions == [] and consumer.commits == []
    consumer.revoke({P0})  # closing the consumer afterwards commits nothing either
    assert producer.transactions == [] and consumer.commits == []


def test_revocation_commits_the_transaction_before_partitions_move(tmp_path):
    pipeline, consumer, producer, log = transactional_pipeline(
        tmp_path, {}, batch_max_wait_seconds=60
    )
    pipeline.add(chunk(messages(0, [record([5, 5, 5, 5])] * 3)))
    consumer.revoke({P0})
    assert log == ["begin", "commit_transaction"] and consumer.commits == []
    ((offsets, _, sent),) = producer.transactions
    assert offsets == {P0: 3} and len(sent) == 3


def test_a_revocation_that_cannot_commit_aborts_and_leaves_the_records_to_the_new_owner(
    tmp_path,
):
    pipeline, consumer, producer, log = transactional_pipeline(
        tmp_path, {}, batch_max_wait_seconds=60
    )
    pipeline.add(chunk(messages(0, [record([5, 5, 5, 5])])))
    producer.outcomes = [TransactionAbortable("TxnOffsetCommit: REBALANCE_IN_PROGRESS")]
    consumer.revoke({P0})
    assert log == ["begin", "commit_transaction", "abort"]
    assert consumer.seeks == [] and consumer.commits == []  # no consumer call in the callback
    run_once(pipeline)  # the worker goes on
    assert producer.transactions == []


def test_lost_partitions_abort_the_open_transaction(tmp_path):
    pipeline, consumer, producer, log = transactional_pipeline(tmp_path, {})
    pipeline.add(chunk(messages(0, [record([5, 5, 5, 5])])))
    pipeline._process_batch()
    consumer.hooks.lost({P0, P1})
    assert log == ["begin", "abort"] and consumer.seeks == []
    run_once(pipeline)
    assert producer.transactions == []


def test_at_least_once_never_opens_a_transaction(tmp_path):
    batch = chunk(messages(0, [record([5, 5, 5, 5])]))
    pipeline, consumer, producer, log = make_pipeline(tmp_path, [batch])
    assert not hasattr(producer, "begin_transaction")  # a call would fail the test
    run_once(pipeline)
    assert log == ["flush", "commit"] and consumer.commits == [{("in", 0): 1}]
