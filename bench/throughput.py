"""Worker throughput against a bare kafka-python consumer, on the same broker, in one run.

    .venv/bin/python bench/throughput.py [--records 400000] [--bootstrap-servers HOST:PORT]

1. pre-fill a topic with N 8-feature JSON records (1% anomalous);
2. drain it with a bare kafka-python consumer (the worker's consumer settings);
3. drain it with a real ``anomaly-worker`` process until every offset is committed;
4. offer a fixed load (records/s, 5% anomalous) and measure event -> alert latency;
5. print both rates, their ratio, latency percentiles and the worker's peak RSS.

Rates count from the first record received to the last record consumed (bare)
or committed (worker), so consumer-group joins are left out of both. Steady-state
rates count the records between the moments 5% and 95% of them had been consumed
(the worker's count is scraped from /metrics every 20 ms), beside a bare
confluent-kafka (librdkafka) drain of the same topic.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from confluent_kafka import Producer
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from demo.broker import LocalBroker, free_port, stop_process
from training.data import Table
from training.fit import FitConfig, fit_bundle
from worker.app import tune_garbage_collector
from worker.kafka_io import consumer_config
from worker.settings import WorkerSettings

D = 8
DEFAULT_GC_THRESHOLD = gc.get_threshold()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bootstrap-servers")
    parser.add_argument(
        "--offered-rate", type=float, default=5_000.0, help="records/s, latency phase"
    )
    parser.add_argument("--offered-seconds", type=float, default=10.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--score",
        choices=["combined", "reconstruction"],
        default="combined",
        help="the bundle's score (reconstruction: the autoencoder alone, for a before/after)",
    )
    args = parser.parse_args()

    with ExitStack() as stack:
        bootstrap = args.bootstrap_servers or stack.enter_context(LocalBroker()).bootstrap_servers
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        tag = uuid.uuid4().hex[:8]
        topic, alerts, dlq = f"bench-{tag}", f"bench-alerts-{tag}", f"bench-dlq-{tag}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(t, args.partitions, 1) for t in (topic, alerts, dlq)])
        admin.close()

        rng = np.random.default_rng(0)
        fit_bundle(
            Table(
                rng.normal(size=(20_000, D)).astype(np.float32), tuple(f"f{i}" for i in range(D))
            ),
            workdir / "model",
            FitConfig(epochs=20, seed=0, score=args.score),
        )
        t0 = time.perf_counter()
        ends = fill(bootstrap, topic, args.records, rng, anomaly_share=0.01)
        print(f"pre-filled {args.records} records in {time.perf_counter() - t0:.1f}s", flush=True)

        settings = WorkerSettings(
            bootstrap_servers=bootstrap,
            input_topic=topic,
            alert_topic=alerts,
            dlq_topic=dlq,
            group_id=f"bare-{tag}",
            session_timeout_seconds=6,
        )
        bare_rate, bare_steady = bare_consume(settings, topic, args.records)
        print(f"bare kafka-python consumer: {bare_rate:,.0f} records/s", flush=True)
        confluent_rate, confluent_steady = bare_confluent(
            bootstrap, topic, f"bare-confluent-{tag}", args.records
        )
        print(f"bare confluent-kafka consumer: {confluent_rate:,.0f} records/s", flush=True)
        # The same consumer with the worker's garbage-collector tuning, for a like-for-like view.
        settings = settings.model_copy(update={"group_id": f"bare-gc-{tag}"})
        tune_garbage_collector()
        bare_gc_rate, _ = bare_consume(settings, topic, args.records)
        gc.set_threshold(*DEFAULT_GC_THRESHOLD)
        gc.unfreeze()
        print(f"bare consumer, GC tuned:    {bare_gc_rate:,.0f} records/s", flush=True)

        port = free_port()
        env = {
            **os.environ,
            "ANOMALY_BOOTSTRAP_SERVERS": bootstrap,
            "ANOMALY_INPUT_TOPIC": topic,
            "ANOMALY_ALERT_TOPIC": alerts,
            "ANOMALY_DLQ_TOPIC": dlq,
            "ANOMALY_GROUP_ID": f"worker-{tag}",
            "ANOMALY_MODEL_PATH": str(workdir / "model"),
            "ANOMALY_METRICS_PORT": str(port),
            "ANOMALY_METRICS_HOST": "127.0.0.1",
            "ANOMALY_SESSION_TIMEOUT_SECONDS": "6",
            "ANOMALY_DEVICE": args.device,
            "ANOMALY_LOG_LEVEL": "WARNING",
        }
        worker = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env)
        stack.callback(stop_process, worker)
        worker_rate, cpu_share, worker_steady = worker_drain(
            port, bootstrap, f"worker-{tag}", topic, ends, worker.pid
        )
        print(f"worker (drained and committed): {worker_rate:,.0f} records/s", flush=True)

        p50, p99, n = offered_load(
            bootstrap, topic, alerts, args.offered_rate, args.offered_seconds, rng
        )
        rss = peak_rss_mib(worker.pid)
        code = stop_process(worker)

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    print(f"records: {args.records} x {D} features, {args.partitions} partitions")
    print(f"bare kafka-python consume: {bare_rate:12,.0f} records/s")
    print(f"anomaly-worker:            {worker_rate:12,.0f} records/s")
    print(f"ratio worker / bare:       {worker_rate / bare_rate:12.2f}")
    print(f"bare, GC tuned as worker:  {bare_gc_rate:12,.0f} records/s")
    print("steady state (5%-95% of the records):")
    print(f"  bare kafka-python:       {bare_steady:12,.0f} records/s")
    print(f"  bare confluent-kafka:    {confluent_steady:12,.0f} records/s")
    print(f"  anomaly-worker:          {worker_steady:12,.0f} records/s")
    print(f"  worker / bare kafka-py:  {worker_steady / bare_steady:12.2f}")
    print(f"  worker / bare confluent: {worker_steady / confluent_steady:12.2f}")
    print(f"ratio worker / tuned bare: {worker_rate / bare_gc_rate:12.2f}")
    print(
        f"latency at {args.offered_rate:,.0f} records/s offered: p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms ({n} alerts)"
    )
    print(f"worker CPU while draining: {cpu_share:12.0%} of one core")
    print(f"worker peak RSS:           {rss:12.0f} MiB")
    print(f"worker exit code:          {code:12d}")
    return 0


def steady_rate(timeline: list[tuple[float, int]], n: int) -> float:
    """Records/s between the moments 5% and 95% of ``n`` had been counted (steady state)."""
    low = next((t, c) for t, c in timeline if c >= 0.05 * n)
    high = next((t, c) for t, c in timeline if c >= 0.95 * n)
    return (high[1] - low[1]) / (high[0] - low[0])


def bare_confluent(bootstrap: str, topic: str, group: str, n: int) -> tuple[float, float]:
    """A bare confluent-kafka (librdkafka) consumer drain: (first-to-last rate, steady rate)."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    count, first, timeline = 0, None, []
    deadline = time.monotonic() + 300
    while count < n and time.monotonic() < deadline:
        messages = consumer.consume(num_messages=10_000, timeout=0.1)
        good = sum(1 for m in messages if m.error() is None)
        if good and first is None:
            first = time.perf_counter()
        count += good
        timeline.append((time.perf_counter(), count))
    last = time.perf_counter()
    consumer.close()
    assert count >= n and first is not None
    return n / (last - first), steady_rate(timeline, n)


def fill(
    bootstrap: str, topic: str, n: int, rng: np.random.Generator, anomaly_share: float
) -> dict[int, int]:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000}
    )
    X = rng.normal(size=(n, D)).round(5)
    anomalous = rng.random(n) < anomaly_share
    X[anomalous] += 8.0
    ends: dict[int, int] = {}

    def delivered(err, msg):  # type: ignore[no-untyped-def]
        if err is None:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    now = time.time()
    for i in range(n):
        value = json.dumps(
            {"id": f"r{i}", "ts": now, "entity": f"e{i % 1000}", "features": X[i].tolist()}
        )
        while True:
            try:
                producer.produce(topic, value.encode(), on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    assert sum(ends.values()) == n, f"only {sum(ends.values())} of {n} delivered"
    return ends


def bare_consume(settings: WorkerSettings, topic: str, n: int) -> tuple[float, float]:
    """A bare kafka-python drain with the worker's settings: (first-to-last, steady) rates."""
    consumer = KafkaConsumer(**consumer_config(settings))
    consumer.subscribe([topic])
    cpu_before = cpu_seconds(os.getpid())
    count, first, last = 0, None, None
    timeline: list[tuple[float, int]] = []
    deadline = time.monotonic() + 300
    while count < n and time.monotonic() < deadline:
        polled = consumer.poll(timeout_ms=100, max_records=settings.batch_max_records)
        for records in polled.values():
            if first is None:
                first = time.perf_counter()
            count += len(records)
        last = time.perf_counter()
        timeline.append((last, count))
    cpu = cpu_seconds(os.getpid()) - cpu_before
    consumer.close(autocommit=False)
    assert count >= n and first is not None and last is not None
    print(f"bare consumer CPU: {cpu / (last - first):.0%} of one core (join included)", flush=True)
    return n / (last - first), steady_rate(timeline, n)


def scrape(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def worker_drain(
    port: int, bootstrap: str, group: str, topic: str, ends: dict[int, int], pid: int
) -> tuple[float, float, float]:
    """Records/s from the first record consumed to the last committed, CPU share meanwhile,
    and the steady-state rate (5%-95% of the records consumed, scraped every 20 ms)."""
    deadline = time.monotonic() + 600
    while scrape(port, "anomaly_records_consumed_total") == 0:
        assert time.monotonic() < deadline, "the worker consumed nothing"
        time.sleep(0.01)
    first = time.perf_counter()
    cpu_first = cpu_seconds(pid)
    n = sum(ends.values())
    timeline: list[tuple[float, int]] = []
    while (consumed := scrape(port, "anomaly_records_consumed_total")) < n:
        timeline.append((time.perf_counter(), int(consumed)))
        assert time.monotonic() < deadline, f"consumed only {consumed} of {n}"
        time.sleep(0.02)
    timeline.append((time.perf_counter(), int(consumed)))
    probe = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in ends]
    while True:
        done = {tp.partition: probe.committed(tp) or 0 for tp in partitions}
        if done == ends:
            break
        assert time.monotonic() < deadline, f"not committed: {done} != {ends}"
        time.sleep(0.02)
    elapsed = time.perf_counter() - first
    cpu_share = (cpu_seconds(pid) - cpu_first) / elapsed
    probe.close(autocommit=False)
    return n / elapsed, cpu_share, steady_rate(timeline, n)


def offered_load(bootstrap, topic, alerts, rate, seconds, rng):  # type: ignore[no-untyped-def]
    reader = KafkaConsumer(
        alerts, bootstrap_servers=bootstrap, auto_offset_reset="latest", fetch_max_wait_ms=50
    )
    reader.poll(timeout_ms=500)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    started, sent, tag = time.monotonic(), 0, "lat"
    while (now := time.monotonic()) < started + seconds:
        due = int((now - started) * rate) - sent
        for i in range(due):
            features = rng.normal(size=D)
            if rng.random() < 0.05:
                features += 8.0
            body = {
                "id": f"{tag}{sent + i}",
                "ts": time.time(),
                "features": features.round(5).tolist(),
            }
            producer.produce(topic, json.dumps(body).encode())
        sent += max(due, 0)
        producer.poll(0)
        time.sleep(0.002)
    producer.flush(30)
    latencies = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for records in reader.poll(timeout_ms=200).values():
            for r in records:
                body = json.loads(r.value)
                if body["id"].startswith(tag):
                    # the alert's broker-side create time minus the event time
                    latencies.append(r.timestamp / 1000 - body["ts"])
    reader.close()
    arr = np.asarray(latencies)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99)), len(arr)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())
