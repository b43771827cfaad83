"""ANOMALY_PROCESSING_GUARANTEE=exactly_once against a real broker: outputs and offsets commit
together, and SIGKILLs plus a rebalance leave every expected output committed exactly once.

Which outputs are committed is read from the topic's log itself (:func:`read_log`: the commit
and abort markers each producer wrote), as a broker works it out for ``read_committed``
readers. The embedded Tansu broker writes those markers and fences a restarted producer, but
hands records of aborted transactions to ``read_committed`` readers anyway; against a broker
that filters them (Apache Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` or testcontainers) the test also
reads the outputs with a real ``read_committed`` consumer. The full counts of the chaos test
(10 SIGKILLs) run with ``ANOMALY_CHAOS_FULL=1``.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import pytest

from tests.helpers import record
from tests.integration.conftest import CLIENTS
from tests.integration.kafka_helpers import (
    broker_fences_stale_generations,
    broker_filters_aborted_records,
    create_topics,
    produce,
    read_log,
    read_topic,
    wait_committed,
    wait_for,
)
from tests.integration.traffic import FULL, Traffic, settled

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("kafka_client", CLIENTS, indirect=True),
]

EXACTLY_ONCE = {"ANOMALY_PROCESSING_GUARANTEE": "exactly_once"}


def letter_sources(records) -> list[tuple[bytes, bytes]]:
    """(source partition, source offset) of each dead letter."""
    return [
        (dict(r.headers)["source.partition"], dict(r.headers)["source.offset"]) for r in records
    ]


def test_outputs_and_offsets_commit_together(kafka_bootstrap, topics, start_worker):
    values, anomalies, bad = [], set(), 0
    for i in range(3_000):
        if i % 101 == 0:
            values.append(b"not json")
            bad += 1
        elif i % 40 == 0:
            values.append(record([5, 5, 5, 5], id=f"a{i}"))
            anomalies.add(f"a{i}")
        else:
            values.append(record([0.1, 0.0, -0.1, 0.2], id=f"n{i}"))
    ends = produce(kafka_bootstrap, topics.input, values)
    worker = start_worker(**EXACTLY_ONCE, ANOMALY_BATCH_MAX_RECORDS="200")
    worker.wait_ready()
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends)
    assert worker.terminate() == 0

    alerts = read_log(kafka_bootstrap, topics.alerts)
    letters = read_log(kafka_bootstrap, topics.dlq)
    assert Counter(json.loads(r.value)["id"] for r in alerts.committed) == Counter(anomalies)
    assert len(set(letter_sources(letters.committed))) == len(letters.committed) == bad
    assert not (alerts.aborted or alerts.open or letters.aborted or letters.open)
    assert all(r.timestamp for r in alerts.committed)
    log = worker.log()
    assert "exactly_once, transactional id" in log and "Traceback" not in log
    # The worker said how its transactions ended; the latency counts each committed alert.
    assert "transaction aborted" not in log


def test_metrics_count_transactions_and_committed_alert_latency(
    kafka_bootstrap, topics, start_worker
):
    values = [record([5, 5, 5, 5], id=f"a{i}") for i in range(50)]
    worker = start_worker(**EXACTLY_ONCE)
    worker.wait_ready()
    ends = produce(kafka_bootstrap, topics.input, values)
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends)
    committed = worker.metric("anomaly_transactions_total", {"result": "committed"})
    assert committed is not None and committed >= 1
    assert worker.metric("anomaly_transactions_total", {"result": "aborted"}) in (None, 0)
    assert worker.metric("anomaly_end_to_end_latency_seconds_count") == 50
    assert worker.terminate() == 0


def test_a_second_worker_with_the_same_transactional_id_fences_the_first(
    kafka_bootstrap, topics, start_worker
):
    same = {**EXACTLY_ONCE, "ANOMALY_TRANSACTIONAL_ID": f"{topics.group}-shared"}
    first = start_worker(**same)
    first.wait_ready()
    produce(kafka_bootstrap, topics.input, [record([5, 5, 5, 5], id="x1")])
    wait_for(lambda: first.metric("anomaly_alerts_total") == 1, 30, message="a first alert")
    second = start_worker(**same)
    second.wait_ready()
    # Records on every partition: whichever the first worker still owns after the second
    # joined, it gets work, opens a transaction and learns that it is fenced. (Unkeyed
    # records in one produce call land on one partition, which may be the second's alone.)
    for partition in range(3):
        rows = [record([5, 5, 5, 5], id=f"x{partition}-{i}") for i in range(13)]
        produce(kafka_bootstrap, topics.input, rows, partition=partition)
    wait_for(first.exited, 60, message="the fenced worker to stop")
    assert first.process.returncode == 1
    assert "fenced: a newer producer with transactional id" in first.log()
    assert "ANOMALY_TRANSACTIONAL_ID" in first.log() and "Traceback" not in first.log()
    assert not second.exited()
    assert second.terminate() == 0


def test_sigkills_leave_every_output_committed_exactly_once(kafka_bootstrap, topics, start_worker):
    """A worker SIGKILLed at random moments mid-transaction and restarted with its transactional
    id (which fences the dead one and aborts its open transaction), under continuous traffic
    with anomalies and malformed records: every output is committed exactly once."""
    sigkills_exactly_once(kafka_bootstrap, topics, start_worker, replicas=1, rebalance=False)


def test_two_workers_sigkills_and_a_rebalance_leave_every_output_committed_exactly_once(
    kafka_bootstrap, topics, start_worker
):
    """The issue's scenario: two workers, SIGKILLs at random moments and a third worker joining
    and leaving. Needs a broker that fences zombies: the embedded Tansu hands a member's
    partitions to a newcomer before the member has given them up, and accepts transactional
    offsets of the stale generation, so the old owner's last transaction can commit beside
    the new owner's (seen here as duplicate committed alerts). Apache Kafka refuses it."""
    if not broker_fences_stale_generations(kafka_bootstrap, f"{topics.input}-fencing"):
        pytest.skip("this broker does not fence zombie members (Tansu); needs Apache Kafka")
    sigkills_exactly_once(kafka_bootstrap, topics, start_worker, replicas=2, rebalance=True)


def sigkills_exactly_once(kafka_bootstrap, topics, start_worker, replicas, rebalance):
    """``replicas`` workers (each its own transactional id, kept across its restarts) under
    continuous traffic; SIGKILLs that land in open transactions (and, with ``rebalance``, a
    further worker joining and leaving); then every expected alert and dead letter must be
    committed exactly once, and the aborted outputs visible to read_uncommitted readers."""
    partitions = 4
    slot_env = [
        {**EXACTLY_ONCE, "ANOMALY_TRANSACTIONAL_ID": f"{topics.group}-slot{i}"}
        for i in range(replicas)
    ]
    shared = f"{topics.input}-{partitions}p"
    create_topics(kafka_bootstrap, [shared], partitions=partitions)
    # Transactions stay open up to 2 s while there is a backlog: the kills below land in one.
    common = {
        "ANOMALY_INPUT_TOPIC": shared,
        "ANOMALY_BATCH_MAX_RECORDS": "500",
        "ANOMALY_COMMIT_INTERVAL_SECONDS": "2",
    }
    pool = [start_worker(**common, **env) for env in slot_env]
    for worker in pool:
        worker.wait_ready(60)
    rng = random.Random(13)
    traffic = Traffic(kafka_bootstrap, shared).start()
    kills = 10 if FULL else 4
    try:
        for k in range(kills):
            wait_for(lambda: settled(pool, partitions), 60, 0.2, "the group to settle")
            time.sleep(rng.uniform(1.0, 3.0))
            slot = rng.randrange(replicas)
            target = (pool[slot].metric("anomaly_records_consumed_total") or 0) + rng.randint(
                1_000, 5_000
            )
            traffic.burst(20_000)  # a backlog: the worker is not caught up, so no commit ...
            wait_for(
                lambda s=slot, t=target: (
                    (pool[s].metric("anomaly_records_consumed_total") or 0) > t
                ),
                60,
                0.02,
                "the worker to be draining the backlog",
            )
            pool[slot].kill()  # ... mid-transaction: its outputs are open, never committed
            pool[slot] = start_worker(**common, **slot_env[slot])  # aborts what it left open
            pool[slot].wait_ready(60)
            if rebalance and k == kills // 2:  # no kill: a further worker joins, then leaves
                extra = start_worker(
                    **common, **EXACTLY_ONCE, ANOMALY_TRANSACTIONAL_ID=f"{topics.group}-extra"
                )
                wait_for(
                    lambda m=(*pool, extra): settled(m, partitions), 60, 0.2, "a settled group"
                )
                time.sleep(2)
                assert extra.terminate() == 0, extra.log()[-3000:]
    finally:
        traffic.stop()
    wait_committed(kafka_bootstrap, topics.group, shared, traffic.ends, 240)
    for worker in pool:
        assert worker.terminate() == 0, worker.log()[-3000:]

    alerts = read_log(kafka_bootstrap, topics.alerts)
    letters = read_log(kafka_bootstrap, topics.dlq)
    alerted = Counter(json.loads(r.value)["id"] for r in alerts.committed)
    assert set(alerted) == traffic.anomalies(), "an anomaly without a committed alert"
    assert max(alerted.values()) == 1, "an alert committed twice"
    lettered = Counter(letter_sources(letters.committed))
    assert len(lettered) == traffic.bad and max(lettered.values()) == 1
    assert not alerts.open and not letters.open, "a transaction left open"
    # The test can tell the difference: a read_uncommitted reader sees the aborted outputs of
    # the killed workers, produced again (and committed) by their successors.
    redone = {json.loads(r.value)["id"] for r in alerts.aborted} & set(alerted)
    assert redone, "no SIGKILL hit an open transaction with alerts: the test proved nothing"
    uncommitted = read_topic(
        kafka_bootstrap, topics.alerts, len(alerts.committed) + len(alerts.aborted), 60
    )
    assert len(uncommitted) > len(alerted)
    probe = f"{shared}-probe"
    create_topics(kafka_bootstrap, [probe], partitions=1)
    if broker_filters_aborted_records(kafka_bootstrap, probe):
        seen = read_topic(
            kafka_bootstrap, topics.alerts, len(alerted), 60, isolation_level="read_committed"
        )
        assert Counter(json.loads(r.value)["id"] for r in seen) == alerted
    print(
        f"exactly once: {traffic.sent} records, {replicas} worker(s), {kills} SIGKILLs"
        f"{' and a rebalance' if rebalance else ''}; {len(alerted)} alerts and {len(lettered)} "
        f"dead letters committed once each; {len(alerts.aborted)} alerts and "
        f"{len(letters.aborted)} dead letters aborted"
    )
