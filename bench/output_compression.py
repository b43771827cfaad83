"""What compressing the worker's outputs costs and saves: alerts produced with each codec.

    .venv/bin/python bench/output_compression.py [--alerts 50000] [--bootstrap-servers HOST:PORT]

Builds real alerts (``worker.core.alerts.build_alerts``, 8 features, 3 top features) and produces
them with the worker's producer settings once per codec, on the same broker in one run:
CPU seconds of this process per 10,000 alerts, wall time, and bytes on the wire (the size
of the v2 record batches the producer's 256 KiB batching makes). The default
``ANOMALY_OUTPUT_COMPRESSION`` comes from it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from contextlib import ExitStack

import numpy as np
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from demo.broker import LocalBroker
from worker.contract.messages import Message
from worker.contract.records import Record
from worker.core.alerts import AlertContext, build_alerts
from worker.kafka.kafka_python_producer import producer_config
from worker.settings import WorkerSettings

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
D = 8


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--alerts", type=int, default=50_000)
    parser.add_argument("--bootstrap-servers")
    args = parser.parse_args()
    alerts = make_alerts(args.alerts)
    rows = []
    with ExitStack() as stack:
        bootstrap = args.bootstrap_servers or stack.enter_context(LocalBroker()).bootstrap_servers
        for codec in CODECS:
            topic = f"bench-out-{codec}-{uuid.uuid4().hex[:6]}"
            admin = KafkaAdminClient(bootstrap_servers=bootstrap)
            admin.create_topics([NewTopic(topic, 4, 1)])
            admin.close()
            settings = WorkerSettings(bootstrap_servers=bootstrap, output_compression=codec)
            producer = KafkaProducer(
                **producer_config(settings.connection(), settings.producer_options())
            )
            producer.send(topic, value=b"warm-up").get(timeout=30)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for key, value in alerts:
                producer.send(topic, key=key, value=value)
            producer.flush(120)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            producer.close()
            wire = batch_bytes(alerts, codec)
            rows.append((codec, cpu, wall, wire))
    raw = sum(len(k) + len(v) for k, v in alerts)
    print(f"{args.alerts:,} alerts, {raw / len(alerts):.0f} bytes each; {os.cpu_count()} cores\n")
    print("| codec | CPU s per 10k alerts | wall s | bytes on the wire | vs none |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = rows[0][3]
    for codec, cpu, wall, wire in rows:
        per = cpu / len(alerts) * 10_000
        print(f"| {codec} | {per:.3f} | {wall:.2f} | {wire:,.0f} | {wire / base:.2f} |")
    return 0


def make_alerts(n: int) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(0)
    names = tuple(f"feature_{i}" for i in range(D))
    context = AlertContext(names, 4.2, "20261201T000000Z-abc123", 3, time.time())
    features = rng.normal(size=(n, D)).astype(np.float32) + 6
    errors = rng.random((n, D)).astype(np.float32)
    expected = rng.normal(size=(n, D)).astype(np.float32)
    records = [Record(features=[], id=f"tx-{i}", entity=f"card-{i % 5000}") for i in range(n)]
    messages = [Message("features", i % 4, i, int(time.time() * 1000), None, b"") for i in range(n)]
    scores = errors.sum(axis=1) + 4.2
    built = build_alerts(context, records, messages, scores, features, errors, expected)
    return [(a.key, a.value) for a in built]


CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def batch_bytes(alerts: list[tuple[bytes, bytes]], codec: str) -> int:
    """Bytes of the record batches (v2) these alerts make with the producer's 256 KiB batches."""
    from kafka.record.default_records import DefaultRecordBatchBuilder

    def builder() -> DefaultRecordBatchBuilder:
        return DefaultRecordBatchBuilder(
            magic=2,
            compression_type=CODEC_IDS[codec],
            is_transactional=False,
            producer_id=-1,
            producer_epoch=-1,
            base_sequence=-1,
            batch_size=256 * 1024,
        )

    total, batch, offset = 0, builder(), 0
    now = int(time.time() * 1000)
    for key, value in alerts:
        if batch.append(offset, now, key, value, []) is None:
            total += len(batch.build())
            batch, offset = builder(), 0
            batch.append(offset, now, key, value, [])
        offset += 1
    return total + len(batch.build())


if __name__ == "__main__":
    sys.exit(main())
