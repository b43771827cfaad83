"""Faults a producer, the broker or the network can throw at a running worker (real broker).

Each test asserts the outcome a user relies on: the worker stays up (or stops with its
documented exit code and one line), every record gets its alert or dead letter, and
nothing is committed past an output the broker did not acknowledge.
"""

from __future__ import annotations

import json
import time

import pytest

from demo.broker import LocalBroker, free_port
from tests.helpers import record
from tests.integration.conftest import CLIENTS
from tests.integration.kafka_helpers import (
    broker_filters_aborted_records,
    create_topics,
    produce,
    read_topic,
    wait_committed,
    wait_for,
)
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.traffic import alerted_ids, backlog

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("kafka_client", CLIENTS, indirect=True),
]

CODECS = ["gzip", "snappy", "lz4", "zstd"]


@pytest.mark.parametrize("output_codec", CODECS)
def test_every_compression_codec_is_consumed_and_outputs_can_be_compressed(
    kafka_bootstrap, topics, start_worker, output_codec
):
    ends: dict[int, int] = {}
    anomalies: set[str] = set()
    for codec in CODECS:
        values, owed = backlog(300, every=20, prefix=f"{codec}-")
        produced = produce(
            kafka_bootstrap,
            topics.input,
            values,
            keys=[f"k{i}".encode() for i in range(len(values))],
            config={"compression.type": codec, "linger.ms": 20},
        )
        ends = {p: max(ends.get(p, 0), o) for p, o in {**ends, **produced}.items()}
        anomalies |= owed
    worker = start_worker(ANOMALY_OUTPUT_COMPRESSION=output_codec)
    worker.wait_ready()
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends)
    assert sorted(alerted_ids(kafka_bootstrap, topics.alerts, len(anomalies))) == sorted(anomalies)
    assert worker.metric("anomaly_records_scored_total") == 1_200
    assert not worker.exited()
    assert worker.terminate() == 0


@pytest.mark.parametrize("size", [1_020_000, 1_200_000])
def test_an_oversized_record_is_dead_lettered_cut_to_fit_and_the_worker_goes_on(
    kafka_bootstrap, topics, start_worker, size
):
    big = b'{"features": [1, 2, 3, 4], "pad": "' + b"x" * size + b'"}'
    try:
        ends = produce(
            kafka_bootstrap,
            topics.input,
            [big, record([5, 5, 5, 5], id="after")],
            partition=0,
            config={"message.max.bytes": 4_000_000},
        )
    except AssertionError as exc:  # a broker with the default 1 MB message.max.bytes
        pytest.skip(f"the broker refuses a {size}-byte record: {exc}")
    worker = start_worker()
    worker.wait_ready()
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends)
    (letter,) = read_topic(kafka_bootstrap, topics.dlq, 1)
    headers = dict(letter.headers)
    assert headers["error.reason"] == b"oversized"
    assert headers["error.truncated"] == b"value"
    assert headers["source.value.size"] == str(len(big)).encode()
    assert big.startswith(letter.value) and len(letter.value) >= 900_000
    assert alerted_ids(kafka_bootstrap, topics.alerts, 1) == ["after"]
    assert worker.terminate() == 0


def test_tombstones_null_keys_and_headers(kafka_bootstrap, topics, start_worker):
    values = [None, None, record([5, 5, 5, 5], id="no-key"), record([5, 5, 5, 5], id="headers")]
    ends = produce(
        kafka_bootstrap,
        topics.input,
        values,
        keys=[b"deleted", None, None, b"h"],
        partition=1,
        headers=[None, None, None, [("trace-id", b"abc"), ("empty", b"")]],
    )
    worker = start_worker()
    worker.wait_ready()
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends)
    keyed, keyless = sorted(read_topic(kafka_bootstrap, topics.dlq, 2), key=lambda r: r.offset)
    assert keyed.key == b"deleted" and keyed.value is None
    assert keyless.key is None and keyless.value == b""  # neither key nor value: empty value
    for letter in (keyed, keyless):
        assert dict(letter.headers)["error.reason"] == b"empty_value"
    alerts = {json.loads(r.value)["id"]: r for r in read_topic(kafka_bootstrap, topics.alerts, 2)}
    assert set(alerts) == {"no-key", "headers"}
    assert alerts["no-key"].key == b"no-key"  # no entity, no Kafka key: keyed by id
    assert worker.terminate() == 0


def test_records_of_aborted_transactions_are_never_scored(kafka_bootstrap, topics, start_worker):
    from confluent_kafka import Producer

    probe = topics.input + "-probe"
    create_topics(kafka_bootstrap, [probe], partitions=1)
    if not broker_filters_aborted_records(kafka_bootstrap, probe):
        pytest.skip("this broker returns aborted records to read_committed readers (Tansu does)")
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": topics.group})
    producer.init_transactions()
    for outcome, prefix in (("commit", "kept"), ("abort", "aborted"), ("commit", "later")):
        producer.begin_transaction()
        for i in range(10):
            producer.produce(topics.input, value=record([5, 5, 5, 5], id=f"{prefix}{i}"))
        producer.flush()
        getattr(producer, f"{outcome}_transaction")()
    worker = start_worker()
    worker.wait_ready()
    alerted = alerted_ids(kafka_bootstrap, topics.alerts, 20, timeout_seconds=60)
    assert sorted(alerted) == sorted(
        [f"kept{i}" for i in range(10)] + [f"later{i}" for i in range(10)]
    )
    assert worker.terminate() == 0


@pytest.fixture
def broker_behind_proxy(tmp_path):
    """A broker of its own that advertises a loopback proxy: cutting the proxy cuts every link."""
    proxy_port = free_port()
    with LocalBroker(log_path=tmp_path / "tansu-proxied.log", advertised_port=proxy_port) as broker:
        proxy = TcpProxy(proxy_port, ("127.0.0.1", broker.port)).start()
        try:
            yield broker, proxy, f"127.0.0.1:{proxy_port}"
        finally:
            proxy.stop()


def test_a_network_cut_mid_stream_is_ridden_out_and_nothing_is_lost(
    broker_behind_proxy, topics, start_worker
):
    import os

    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("needs a broker whose advertised address the test controls")
    _broker, proxy, via_proxy = broker_behind_proxy
    # The broker advertises the proxy, so every client (the test's too) goes through it.
    create_topics(via_proxy, [topics.input, topics.alerts, topics.dlq], partitions=3)
    cut_seconds = float(os.environ.get("ANOMALY_TEST_CUT_SECONDS", "15"))
    values, anomalies = backlog(40_000, every=50)
    ends = produce(via_proxy, topics.input, values)
    worker = start_worker(
        bootstrap=via_proxy,
        ANOMALY_CONNECT_BACKOFF_MAX_SECONDS="1",
        ANOMALY_BATCH_MAX_RECORDS="200",
        # Outputs in flight at the cut are retried for longer than it lasts (default 120 s).
        ANOMALY_DELIVERY_TIMEOUT_SECONDS=str(max(120.0, cut_seconds + 60)),
    )
    worker.wait_ready()
    wait_for(lambda: (worker.metric("anomaly_records_consumed_total") or 0) > 2_000, 30, 0.02)

    proxy.cut()  # mid-stream: every connection dropped, new ones refused
    cut_at = time.monotonic()
    consumed_at_cut = worker.metric("anomaly_records_consumed_total")
    assert consumed_at_cut < len(values), "the test needs a cut mid-stream"
    wait_for(lambda: worker.http("/readyz")[0] == 503, 15, message="/readyz 503 while cut off")
    time.sleep(max(cut_seconds - (time.monotonic() - cut_at), 0))
    assert not worker.exited(), worker.log()
    assert worker.http("/healthz")[0] == 200  # alive: Kubernetes must not restart it
    proxy.restore()

    worker.wait_ready(timeout_seconds=60)
    wait_committed(via_proxy, topics.group, topics.input, ends, timeout_seconds=120)
    alerted = set(alerted_ids(via_proxy, topics.alerts, len(anomalies), timeout_seconds=60))
    assert alerted == anomalies  # none lost (repeats allowed)
    log = worker.log()
    assert "broker unreachable" in log and "broker reachable again" in log
    assert "stopping" not in log  # (kafka-python logs its own socket tracebacks meanwhile)
    assert worker.terminate() == 0


def test_a_second_worker_joining_under_load_does_not_stop_the_first(
    kafka_bootstrap, topics, start_worker
):
    shared = topics.input + "-4p"
    create_topics(kafka_bootstrap, [shared], partitions=4)
    values, anomalies = backlog(60_000, every=100)
    ends = produce(
        kafka_bootstrap, shared, values, keys=[f"k{i}".encode() for i in range(len(values))]
    )
    env = {"ANOMALY_INPUT_TOPIC": shared, "ANOMALY_BATCH_MAX_RECORDS": "200"}
    first = start_worker(**env)
    first.wait_ready()
    wait_for(lambda: (first.metric("anomaly_records_consumed_total") or 0) > 3_000, 30, 0.05)
    second = start_worker(**env)  # joins while the first is busy draining the backlog
    second.wait_ready()
    wait_for(lambda: "partitions revoked" in first.log(), 30, message="a rebalance")
    wait_committed(kafka_bootstrap, topics.group, shared, ends, 120)
    assert not first.exited() and not second.exited(), first.log()
    for worker in (first, second):
        log = worker.log()
        assert "Cannot block" not in log and "rebalance callback" not in log
        assert "Traceback" not in log
    assert set(alerted_ids(kafka_bootstrap, topics.alerts, len(anomalies), 60)) == anomalies
    # What the first worker processed before the rebalance was committed, not handed over:
    # the two workers together read at most one batch per partition more than once.
    consumed = sum(w.metric("anomaly_records_consumed_total") for w in (first, second))
    assert len(values) <= consumed <= len(values) + 4 * 200 * 2
    assert first.terminate() == 0 and second.terminate() == 0


def produce_corrupt_batch(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Write one record batch whose checksum does not match (payload flipped after the CRC).

    A broker that validates checksums (Apache Kafka does) refuses it: the test skips there.
    """
    from kafka import KafkaProducer
    from kafka.record import default_records

    real = default_records.DefaultRecordBatchBuilder.build

    def build(self):  # type: ignore[no-untyped-def]
        buffer = real(self)
        buffer[-3] ^= 0xFF
        return buffer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=100, enable_idempotence=False)
    default_records.DefaultRecordBatchBuilder.build = build
    try:
        futures = [producer.send(topic, value=v, partition=0) for v in values]
        producer.flush()
        try:
            for future in futures:
                future.get(timeout=10)
        except Exception as exc:
            pytest.skip(f"the broker refuses a corrupt batch: {exc!r}")
    finally:
        default_records.DefaultRecordBatchBuilder.build = real
        producer.close()


def poisoned_partition(bootstrap, topic):
    """Partition 0: 10 good records, a corrupt batch of 5 at offsets 10-14, 10 good ones after."""
    before = produce(
        bootstrap, topic, [record([5, 5, 5, 5], id=f"b{i}") for i in range(10)], partition=0
    )
    assert before == {0: 10}
    produce_corrupt_batch(bootstrap, topic, [record([5, 5, 5, 5], id=f"x{i}") for i in range(5)])
    return produce(
        bootstrap, topic, [record([5, 5, 5, 5], id=f"a{i}") for i in range(10)], partition=0
    )


def test_an_undecodable_batch_stops_the_worker_with_exit_3_naming_it(
    kafka_bootstrap, topics, start_worker
):
    from tests.integration.kafka_helpers import committed

    poisoned_partition(kafka_bootstrap, topics.input)
    worker = start_worker()  # ANOMALY_ON_UNDECODABLE_BATCH=fail is the default
    assert worker.process is not None
    assert worker.process.wait(timeout=60) == 3
    lines = [ln for ln in worker.log().splitlines() if "cannot decode the record batch" in ln]
    assert len(lines) == 1 and f"{topics.input}[0]@10" in lines[0] and "crc" in lines[0].lower()
    assert "Traceback" not in worker.log()
    # Everything before the batch was processed and committed: a restart resumes at it.
    assert committed(kafka_bootstrap, topics.group, topics.input, [0])[0] == 10
    assert sorted(alerted_ids(kafka_bootstrap, topics.alerts, 10)) == sorted(
        f"b{i}" for i in range(10)
    )


def test_an_undecodable_batch_is_skipped_and_dead_lettered_with_skip(
    kafka_bootstrap, topics, start_worker
):
    ends = poisoned_partition(kafka_bootstrap, topics.input)
    worker = start_worker(ANOMALY_ON_UNDECODABLE_BATCH="skip")
    worker.wait_ready()
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends, 60)
    ids = alerted_ids(kafka_bootstrap, topics.alerts, 20)
    assert sorted(ids) == sorted([f"b{i}" for i in range(10)] + [f"a{i}" for i in range(10)])
    (letter,) = read_topic(kafka_bootstrap, topics.dlq, 1)
    headers = dict(letter.headers)
    assert letter.value == b""  # headers only (a record needs a key or a value)
    assert headers["error.reason"] == b"undecodable"
    assert headers["source.topic"] == topics.input.encode()
    assert (headers["source.partition"], headers["source.offset"]) == (b"0", b"10")
    assert headers["source.offset.last"] == b"14"
    assert worker.metric("anomaly_records_skipped_total", {"reason": "undecodable"}) == 5
    assert not worker.exited()
    assert worker.terminate() == 0


def test_a_broker_gone_longer_than_the_delivery_timeout_exits_1_committing_nothing_past_it(
    broker_behind_proxy, topics, start_worker
):
    """Outputs are retried for ANOMALY_DELIVERY_TIMEOUT_SECONDS; then exit 1, and a restart
    (here: a second worker) re-reads from the last commit, so nothing is lost."""
    import os

    from tests.integration.kafka_helpers import committed

    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("needs a broker whose advertised address the test controls")
    _broker, proxy, via_proxy = broker_behind_proxy
    create_topics(via_proxy, [topics.input, topics.alerts, topics.dlq], partitions=3)
    values, anomalies = backlog(40_000, every=50)
    ends = produce(via_proxy, topics.input, values)
    env = {"ANOMALY_DELIVERY_TIMEOUT_SECONDS": "5", "ANOMALY_BATCH_MAX_RECORDS": "200"}
    first = start_worker(bootstrap=via_proxy, **env)
    first.wait_ready()
    wait_for(lambda: (first.metric("anomaly_records_consumed_total") or 0) > 2_000, 30, 0.02)
    proxy.cut()
    assert first.process is not None
    assert first.process.wait(timeout=90) == 1
    assert "not acknowledged" in first.log() and "unexpected error" not in first.log()
    proxy.restore()

    # Nothing was committed past an output the broker did not acknowledge: every anomaly
    # below the committed offsets already has its alert.
    done = committed(via_proxy, topics.group, topics.input, ends)
    assert sum(done.values()) < sum(ends.values())
    below = {
        json.loads(r.value)["id"]
        for r in read_topic(via_proxy, topics.input, sum(ends.values()))
        if r.offset < done[r.partition]
    }
    assert below & anomalies <= set(alerted_ids(via_proxy, topics.alerts, len(below & anomalies)))

    second = start_worker(bootstrap=via_proxy)
    second.wait_ready()
    wait_committed(via_proxy, topics.group, topics.input, ends, timeout_seconds=120)
    assert set(alerted_ids(via_proxy, topics.alerts, len(anomalies), 60)) == anomalies
    assert second.terminate() == 0


def test_a_missing_output_topic_fails_at_start_with_one_line(kafka_bootstrap, topics, start_worker):
    from kafka import KafkaConsumer

    missing = topics.alerts + "-missing"
    worker = start_worker(ANOMALY_ALERT_TOPIC=missing)
    assert worker.process is not None
    probe = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        # Exit 2 within the metadata timeout, unless the broker creates the topic anyway.
        created = (
            wait_for(lambda: worker.exited() or missing in probe.topics(), 60, 0.5, message="exit")
            and missing in probe.topics()
        )
    finally:
        probe.close()
    if created:
        pytest.skip("this broker creates topics on a metadata request even when told not to")
    code = worker.process.wait(timeout=5)
    assert code == 2, worker.log()
    lines = [ln for ln in worker.log().splitlines() if ln.startswith("anomaly-worker:")]
    assert len(lines) == 1 and f"output topic {missing!r} is missing" in lines[0]
