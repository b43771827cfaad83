"""Worker throughput and latency on both Kafka transports, beside bare clients, in one run.

    .venv/bin/python bench/throughput.py [--records 400000] [--loads 5000,20000,50000]
        [--load-seconds 20] [--clients kafka-python,confluent] [--device cpu|cuda]

On one broker and one pre-filled topic (N 8-feature JSON records, 1% anomalous):

1. a bare kafka-python consumer (the worker's consumer settings) drains the topic;
2. a bare confluent-kafka (librdkafka) consumer drains it;
3. for each transport, a real ``anomaly-worker run`` process drains it (its consumed count
   is scraped from /metrics every 20 ms) until every offset is committed; then it serves
   fixed offered loads (records/s, 5% anomalous) while a reader measures event -> alert
   latency (the alert's receive time minus the record's ``ts``) and the worker's CPU;
4. at each load a bare confluent consumer in this process measures event -> receive
   latency of the input records themselves: what the broker alone costs.

Rates are steady state: the records between the moments 5% and 95% of them had been
consumed. CPU is user + system seconds of the consuming process per million records.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic

from demo.broker import LocalBroker, free_port, stop_process
from training.data import Table
from training.fit import FitConfig, fit_bundle
from worker.settings import WorkerSettings
from worker.transport_kafka_python import consumer_config

D = 8


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bootstrap-servers")
    parser.add_argument("--loads", default="5000,20000,50000", help="offered records/s")
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument("--clients", default="kafka-python,confluent")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--env", action="append", default=[], help="extra ANOMALY_X=Y for workers")
    args = parser.parse_args()
    loads = [float(x) for x in args.loads.split(",") if x]
    clients = [c for c in args.clients.split(",") if c]

    rows: list[tuple[str, float, float]] = []  # (what, steady records/s, CPU s per 1M)
    latency: list[tuple[str, float, float, float, float]] = []  # (what, load, p50, p99, cpu%)
    rss: dict[str, float] = {}
    with ExitStack() as stack:
        bootstrap = args.bootstrap_servers or stack.enter_context(LocalBroker()).bootstrap_servers
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        tag = uuid.uuid4().hex[:8]
        topic = f"bench-{tag}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(topic, args.partitions, 1)])
        admin.close()
        rng = np.random.default_rng(0)
        fit_bundle(
            Table(
                rng.normal(size=(20_000, D)).astype(np.float32), tuple(f"f{i}" for i in range(D))
            ),
            workdir / "model",
            FitConfig(epochs=20, seed=0),
        )
        t0 = time.perf_counter()
        fill(bootstrap, topic, args.records, rng, anomaly_share=0.01)
        print(f"pre-filled {args.records} records in {time.perf_counter() - t0:.1f}s", flush=True)

        settings = WorkerSettings(
            bootstrap_servers=bootstrap, group_id=f"bare-{tag}", session_timeout_seconds=6
        )
        rate, cpu = bare_kafka_python(settings, topic, args.records)
        rows.append(("bare kafka-python", rate, cpu))
        print(f"bare kafka-python: {rate:,.0f} records/s, {cpu:.1f} CPU s/1M", flush=True)
        rate, cpu = bare_confluent(bootstrap, topic, f"bare-confluent-{tag}", args.records)
        rows.append(("bare confluent-kafka", rate, cpu))
        print(f"bare confluent-kafka: {rate:,.0f} records/s, {cpu:.1f} CPU s/1M", flush=True)

        for client in clients:
            alerts = f"bench-alerts-{client}-{tag}"
            dlq = f"bench-dlq-{client}-{tag}"
            admin = KafkaAdminClient(bootstrap_servers=bootstrap)
            admin.create_topics([NewTopic(t, args.partitions, 1) for t in (alerts, dlq)])
            admin.close()
            port = free_port()
            env = {
                **os.environ,
                "ANOMALY_KAFKA_CLIENT": client,
                "ANOMALY_BOOTSTRAP_SERVERS": bootstrap,
                "ANOMALY_INPUT_TOPIC": topic,
                "ANOMALY_ALERT_TOPIC": alerts,
                "ANOMALY_DLQ_TOPIC": dlq,
                "ANOMALY_GROUP_ID": f"worker-{client}-{tag}",
                "ANOMALY_MODEL_PATH": str(workdir / "model"),
                "ANOMALY_METRICS_PORT": str(port),
                "ANOMALY_METRICS_HOST": "127.0.0.1",
                "ANOMALY_SESSION_TIMEOUT_SECONDS": "6",
                "ANOMALY_DEVICE": args.device,
                "ANOMALY_LOG_LEVEL": "WARNING",
                **dict(item.split("=", 1) for item in args.env),
            }
            worker = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env)
            rate, cpu = worker_drain(port, args.records, worker.pid)
            rows.append((f"worker on {client}", rate, cpu))
            print(f"worker on {client}: {rate:,.0f} records/s, {cpu:.1f} CPU s/1M", flush=True)
            for load in loads:
                p50, p99, share, bare50, bare99 = offered_load(
                    bootstrap, topic, alerts, load, args.load_seconds, rng, worker.pid
                )
                latency.append((f"worker on {client}", load, p50, p99, share))
                latency.append(("  bare consumer, same load", load, bare50, bare99, float("nan")))
                print(
                    f"  {load:,.0f}/s: p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms, "
                    f"CPU {share:.0%}; bare consumer p50 {bare50 * 1e3:.0f} ms, "
                    f"p99 {bare99 * 1e3:.0f} ms",
                    flush=True,
                )
            rss[client] = peak_rss_mib(worker.pid)
            stop_process(worker)

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    print(
        f"records: {args.records} x {D} features, {args.partitions} partitions, "
        f"device {args.device}"
    )
    print("| consumer | steady records/s | CPU s per 1M records |")
    print("| --- | ---: | ---: |")
    for what, rate, cpu in rows:
        print(f"| {what} | {rate:,.0f} | {cpu:.1f} |")
    by = {what: rate for what, rate, _ in rows}
    for client in clients:
        bare = "bare kafka-python" if client == "kafka-python" else "bare confluent-kafka"
        print(f"worker on {client} / {bare}: {by[f'worker on {client}'] / by[bare]:.2f}")
    if len(clients) == 2:
        ratio = by["worker on confluent"] / by["worker on kafka-python"]
        print(f"worker on confluent / worker on kafka-python: {ratio:.2f}")
    print()
    print("| consumer | offered records/s | p50 ms | p99 ms | worker CPU (one core) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for what, load, p50, p99, share in latency:
        shown = "" if share != share else f"{share:.0%}"
        print(f"| {what} | {load:,.0f} | {p50 * 1e3:.0f} | {p99 * 1e3:.0f} | {shown} |")
    for client, mib in rss.items():
        print(f"worker on {client} peak RSS: {mib:.0f} MiB")
    return 0


def steady_rate(timeline: list[tuple[float, int, float]], n: int) -> tuple[float, float]:
    """(records/s, CPU s per 1M records) between the moments 5% and 95% of ``n`` were counted.

    ``timeline`` holds (time, count, CPU seconds so far).
    """
    low = next(row for row in timeline if row[1] >= 0.05 * n)
    high = next(row for row in timeline if row[1] >= 0.95 * n)
    records = high[1] - low[1]
    return records / (high[0] - low[0]), (high[2] - low[2]) / records * 1e6


def fill(
    bootstrap: str, topic: str, n: int, rng: np.random.Generator, anomaly_share: float
) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000}
    )
    X = rng.normal(size=(n, D)).round(5)
    X[rng.random(n) < anomaly_share] += 8.0
    delivered = [0]

    def on_delivery(err, _msg):  # type: ignore[no-untyped-def]
        if err is None:
            delivered[0] += 1

    now = time.time()
    for i in range(n):
        value = json.dumps(
            {"id": f"r{i}", "ts": now, "entity": f"e{i % 1000}", "features": X[i].tolist()}
        )
        while True:
            try:
                producer.produce(topic, value.encode(), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    assert delivered[0] == n, f"only {delivered[0]} of {n} delivered"


def bare_kafka_python(settings: WorkerSettings, topic: str, n: int) -> tuple[float, float]:
    """A bare kafka-python drain with the worker's consumer settings, Python's default GC."""
    consumer = KafkaConsumer(**consumer_config(settings))
    consumer.subscribe([topic])
    count, timeline = 0, []
    deadline = time.monotonic() + 300
    while count < n and time.monotonic() < deadline:
        polled = consumer.poll(timeout_ms=100, max_records=settings.batch_max_records)
        count += sum(len(records) for records in polled.values())
        timeline.append((time.perf_counter(), count, cpu_seconds(os.getpid())))
    consumer.close(autocommit=False)
    assert count >= n
    return steady_rate(timeline, n)


def bare_confluent(bootstrap: str, topic: str, group: str, n: int) -> tuple[float, float]:
    """A bare confluent-kafka drain that reads every value (as any consumer must)."""
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
    count, timeline = 0, []
    deadline = time.monotonic() + 300
    while count < n and time.monotonic() < deadline:
        messages = consumer.consume(num_messages=5000, timeout=0.1)
        count += sum(1 for m in messages if m.error() is None and m.value() is not None)
        timeline.append((time.perf_counter(), count, cpu_seconds(os.getpid())))
    consumer.close()
    assert count >= n
    return steady_rate(timeline, n)


def scrape(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def worker_drain(port: int, n: int, pid: int) -> tuple[float, float]:
    """Steady-state rate and CPU of a worker draining ``n`` records, then its commits."""
    deadline = time.monotonic() + 600
    timeline: list[tuple[float, int, float]] = []
    while (consumed := scrape(port, "anomaly_records_consumed_total")) < n:
        timeline.append((time.perf_counter(), int(consumed), cpu_seconds(pid)))
        assert time.monotonic() < deadline, f"consumed only {consumed} of {n}"
        time.sleep(0.02)
    timeline.append((time.perf_counter(), int(consumed), cpu_seconds(pid)))
    # Let the commit of the last records land before offering load.
    time.sleep(2)
    return steady_rate(timeline, n)


def offered_load(bootstrap, topic, alerts, rate, seconds, rng, pid):  # type: ignore[no-untyped-def]
    """Offer ``rate`` records/s: (worker p50, p99, CPU share, bare consumer p50, p99)."""
    tag = f"lat{uuid.uuid4().hex[:6]}-"
    alert_latency: list[float] = []
    bare_latency: list[float] = []
    stop = threading.Event()

    def read(topic_name: str, into: list[float], group: str) -> None:
        reader = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "auto.offset.reset": "latest",
                "fetch.wait.max.ms": 10,
                "session.timeout.ms": 6000,
                "enable.auto.commit": False,
            }
        )
        reader.subscribe([topic_name])
        marker = tag.encode()
        while not stop.is_set():
            for m in reader.consume(1000, 0.05):
                value = m.value() if m.error() is None else None
                if value and marker in value:
                    into.append(time.time() - json.loads(value)["ts"])
        reader.close()

    readers = [
        threading.Thread(target=read, args=(alerts, alert_latency, f"r-{tag}"), daemon=True),
        threading.Thread(target=read, args=(topic, bare_latency, f"b-{tag}"), daemon=True),
    ]
    for reader in readers:
        reader.start()
    time.sleep(8)  # both readers joined their groups
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    started, sent = time.monotonic(), 0
    while (now := time.monotonic()) < started + seconds:
        due = int((now - started) * rate) - sent
        if due > 0:
            X = rng.normal(size=(due, D)).round(5)
            X[rng.random(due) < 0.05] += 8.0
            stamp = time.time()
            for i in range(due):
                body = {"id": f"{tag}{sent + i}", "ts": stamp, "features": X[i].tolist()}
                producer.produce(topic, json.dumps(body, separators=(",", ":")).encode())
            sent += due
        producer.poll(0)
        time.sleep(0.001)
    producer.flush(30)
    share = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    time.sleep(3)
    stop.set()
    for reader in readers:
        reader.join(10)
    a, b = np.asarray(alert_latency), np.asarray(bare_latency)
    assert a.size and b.size, f"no latency samples ({a.size} alerts, {b.size} records)"
    return (
        float(np.percentile(a, 50)),
        float(np.percentile(a, 99)),
        share,
        float(np.percentile(b, 50)),
        float(np.percentile(b, 99)),
    )


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
