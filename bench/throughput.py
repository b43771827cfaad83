"""Worker throughput and latency on both Kafka transports, beside bare clients, in one run.

    .venv/bin/python bench/throughput.py [--records 400000] [--loads 5000,20000,50000]
        [--load-seconds 20] [--clients kafka-python,confluent] [--device cpu|cuda]
        [--guarantees at_least_once,exactly_once] [--drift on,off] [--memory-rows 512,1024]
        [--baseline ../other-checkout] [--entities 10000] [--setups default,telemetry]

On one broker and one pre-filled topic (N 8-feature JSON records, 1% anomalous, spread over
``--entities`` entities, 1,000 by default):

1. a bare kafka-python consumer (the worker's consumer settings) drains the topic;
2. a bare confluent-kafka (librdkafka) consumer drains it;
3. for each transport (and each processing guarantee and drift setting asked for: with
   ``--drift on,off`` every worker phase also runs with ``ANOMALY_DRIFT=false``, the
   bundle's drift reference unused; with ``--memory-rows 512,1024`` one bundle is fitted
   per memory size of the neighbour term and each is run; with ``--setups default,telemetry``
   each worker also runs as telemetry users run it: ``ANOMALY_THRESHOLD_MODE=entity_recent``
   and every score on ``ANOMALY_SCORES_TOPIC``; with ``--baseline DIR`` the worker
   of another checkout, run by its own ``.venv``, too: before/after a change in one run), a
   real ``anomaly-worker run``
   process drains it (its consumed count is scraped from /metrics every 100 ms) until every
   offset is committed; then it serves fixed offered loads (records/s, 5% anomalous) while a
   ``read_committed`` reader measures event -> alert latency (the alert's receive time minus
   the record's ``ts``; with exactly_once an alert is readable once its transaction commits)
   and the worker's CPU;
4. at each load a bare confluent consumer in this process measures event -> receive
   latency of the input records themselves: what the broker alone costs.

Rates are steady state: the records between the moments 5% and 95% of them had been
consumed. CPU is user + system seconds of the consuming process per million records.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Producer
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic

from demo.broker import LocalBroker, free_port, stop_process
from training.config import FitConfig
from training.data import Table
from training.fit import fit_bundle
from worker.kafka.confluent import FETCH_QUEUE_BACKOFF_MS
from worker.kafka.kafka_python import consumer_config
from worker.settings import WorkerSettings

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
    parser.add_argument(
        "--guarantees", default="at_least_once", help="ANOMALY_PROCESSING_GUARANTEE values"
    )
    parser.add_argument("--drift", default="on", help="on, off or on,off (ANOMALY_DRIFT)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--memory-rows",
        default=str(FitConfig().memory_rows),
        help="the bundle's neighbour memory (anomaly-train fit --memory-rows); a list runs each",
    )
    parser.add_argument("--env", action="append", default=[], help="extra ANOMALY_X=Y for workers")
    parser.add_argument("--entities", type=int, default=1_000, help="distinct entity values")
    parser.add_argument(
        "--setups",
        default="default",
        help="default (the model's threshold, alerts only), entity_recent (per-entity "
        "thresholds), scores (a scores topic), telemetry (both), per_entity (per-entity "
        "thresholds and a bundle with a baseline for each of --entities), telemetry_batch "
        "(telemetry, scores in ANOMALY_SCORES_FORMAT=batch), everything (per_entity and "
        "batched scores)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (with its .venv) whose worker runs beside this one's, each phase "
        "after this one's: before/after a change measured in one run",
    )
    args = parser.parse_args()
    loads = [float(x) for x in args.loads.split(",") if x]
    clients = [c for c in args.clients.split(",") if c]
    guarantees = [g for g in args.guarantees.split(",") if g]
    drifts = [d == "on" for d in args.drift.split(",") if d]
    memories = [int(m) for m in args.memory_rows.split(",") if m]
    checkouts: list[Path | None] = [None, args.baseline] if args.baseline else [None]
    setups = [x for x in args.setups.split(",") if x]
    unknown = set(setups) - set(SETUPS)
    if unknown:
        parser.error(f"--setups: unknown {sorted(unknown)} (use {', '.join(SETUPS)})")
    # (client, guarantee, drift, memory rows, checkout, setup) and how their rows are named
    runs = [
        (c, g, d, m, k, u)
        for c in clients
        for g in guarantees
        for d in drifts
        for m in memories
        for k in checkouts
        for u in setups
    ]

    def named(
        client: str,
        guarantee: str,
        drift: bool = True,
        memory: int = 0,
        checkout: Path | None = None,
        setup: str = "default",
    ) -> str:
        details = [guarantee] if len(guarantees) > 1 else []
        details += [setup] if len(setups) > 1 else []
        details += [] if len(drifts) == 1 else ["drift on" if drift else "drift off"]
        details += [f"memory {memory or memories[0]}"] if len(memories) > 1 else []
        details += ["baseline"] if checkout is not None else []
        return f"worker on {client}" + (f" ({', '.join(details)})" if details else "")

    rows: list[tuple[str, float, float]] = []  # (what, steady records/s, CPU s per 1M)
    latency: list[tuple[str, float, float, float, float]] = []  # (what, load, p50, p99, cpu%)
    rss: dict[str, float] = {}
    with ExitStack() as stack:
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
        else:
            embedded = stack.enter_context(LocalBroker())
            bootstrap = embedded.bootstrap_servers
            if embedded.pid is not None:
                BROKER["pid"] = embedded.pid
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        tag = uuid.uuid4().hex[:8]
        topic = f"bench-{tag}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(topic, args.partitions, 1)])
        admin.close()
        rng = np.random.default_rng(0)
        normal = Table(
            rng.normal(size=(20_000, D)).astype(np.float32), tuple(f"f{i}" for i in range(D))
        )
        for memory in memories:
            fit_bundle(
                normal,
                workdir / f"model-{memory}",
                FitConfig(epochs=20, seed=0, memory_rows=memory),
            )
            if {"per_entity", "everything"} & set(setups):  # a baseline for every entity
                print(f"fitting {args.entities:,} entity baselines ...", flush=True)
                fit_bundle(
                    entity_traffic(args.entities, rng),
                    workdir / f"model-{memory}-per-entity",
                    FitConfig(
                        epochs=5, seed=0, memory_rows=memory, per_entity=True, min_entity_rows=100
                    ),
                )
        t0 = time.perf_counter()
        fill(bootstrap, topic, args.records, rng, 0.01, args.entities)
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
        # The same client with the one fetch property the worker changes (see
        # worker.kafka.confluent.FETCH_QUEUE_BACKOFF_MS): what a tuned bare reader gets.
        tuned = {"fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS}
        rate, cpu = bare_confluent(bootstrap, topic, f"bare-tuned-{tag}", args.records, tuned)
        rows.append((BARE_TUNED, rate, cpu))
        print(f"{BARE_TUNED}: {rate:,.0f} records/s, {cpu:.1f} CPU s/1M", flush=True)

        def start_worker(
            client: str,
            guarantee: str,
            drift: bool,
            memory: int,
            checkout: Path | None,
            setup: str,
            broker: str,
            input_topic: str,
        ) -> tuple[Any, int, str]:
            """A worker process on ``broker``: (process, metrics port, alert topic); the worker
            of ``checkout`` (its own .venv) when given, else this one's."""
            suffix = uuid.uuid4().hex[:6]
            alerts, dlq = f"bench-alerts-{suffix}", f"bench-dlq-{suffix}"
            scores = f"bench-scores-{suffix}"
            admin = KafkaAdminClient(bootstrap_servers=broker)
            extra = SETUPS[setup](scores, "")
            outputs = (alerts, dlq, scores) if "ANOMALY_SCORES_TOPIC" in extra else (alerts, dlq)
            admin.create_topics([NewTopic(t, args.partitions, 1) for t in outputs])
            admin.close()
            port = free_port()
            env = {
                **os.environ,
                "ANOMALY_KAFKA_CLIENT": client,
                "ANOMALY_PROCESSING_GUARANTEE": guarantee,
                "ANOMALY_DRIFT": "true" if drift else "false",
                "ANOMALY_TRANSACTIONAL_ID": f"bench-{suffix}",
                "ANOMALY_BOOTSTRAP_SERVERS": broker,
                "ANOMALY_INPUT_TOPIC": input_topic,
                "ANOMALY_ALERT_TOPIC": alerts,
                "ANOMALY_DLQ_TOPIC": dlq,
                "ANOMALY_GROUP_ID": f"worker-{suffix}",
                "ANOMALY_MODEL_PATH": str(workdir / f"model-{memory}"),
                "ANOMALY_METRICS_PORT": str(port),
                "ANOMALY_METRICS_HOST": "127.0.0.1",
                "ANOMALY_SESSION_TIMEOUT_SECONDS": "6",
                "ANOMALY_DEVICE": args.device,
                "ANOMALY_LOG_LEVEL": "WARNING",
                **SETUPS[setup](scores, str(workdir / f"model-{memory}")),
                **dict(item.split("=", 1) for item in args.env),
            }
            log = (workdir / f"worker-{client}-{suffix}.log").open("wb")
            python = sys.executable if checkout is None else str(checkout / ".venv/bin/python")
            process = subprocess.Popen(
                [python, "-m", "worker", "run"],
                env=env,
                cwd=checkout,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            stack.callback(stop_process, process)
            deadline = time.monotonic() + 60
            while not ready(port):
                assert process.poll() is None and time.monotonic() < deadline, "worker not ready"
                time.sleep(0.1)
            return process, port, alerts

        for client, guarantee, drift, memory, checkout, setup in runs:
            name = named(client, guarantee, drift, memory, checkout, setup)
            worker, port, _ = start_worker(
                client, guarantee, drift, memory, checkout, setup, bootstrap, topic
            )
            rate, cpu = worker_drain(port, args.records, worker.pid)
            rows.append((name, rate, cpu))
            batches = scrape(port, "anomaly_batch_size_count")
            mean_batch = scrape(port, "anomaly_batch_size_sum") / max(batches, 1)
            print(
                f"{name}: {rate:,.0f} records/s, {cpu:.1f} CPU s/1M, "
                f"{mean_batch:,.0f} records per batch",
                flush=True,
            )
            rss[name] = peak_rss_mib(worker.pid)
            stop_process(worker)
            for load in loads:
                # The embedded broker slows down as it holds more data (memory grows with
                # every record): each load gets a fresh one. A given cluster is used as is.
                with ExitStack() as phase:
                    broker = (
                        args.bootstrap_servers
                        or phase.enter_context(LocalBroker()).bootstrap_servers
                    )
                    load_topic = f"bench-load-{uuid.uuid4().hex[:6]}"
                    admin = KafkaAdminClient(bootstrap_servers=broker)
                    admin.create_topics([NewTopic(load_topic, args.partitions, 1)])
                    admin.close()
                    worker, port, alerts = start_worker(
                        client, guarantee, drift, memory, checkout, setup, broker, load_topic
                    )
                    p50, p99, share, bare50, bare99 = offered_load(
                        broker,
                        load_topic,
                        alerts,
                        load,
                        args.load_seconds,
                        worker.pid,
                        args.entities,
                    )
                    rss[name] = max(rss[name], peak_rss_mib(worker.pid))
                    stop_process(worker)
                latency.append((name, load, p50, p99, share))
                latency.append(("  bare consumer, same load", load, bare50, bare99, float("nan")))
                print(
                    f"  {load:,.0f}/s: p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms, "
                    f"CPU {share:.0%}; bare consumer p50 {bare50 * 1e3:.0f} ms, "
                    f"p99 {bare99 * 1e3:.0f} ms",
                    flush=True,
                )

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    print(
        f"records: {args.records} x {D} features, {args.partitions} partitions, "
        f"device {args.device}, neighbour memory {args.memory_rows} rows, "
        f"{args.entities:,} entities"
    )
    print("| consumer | steady records/s | CPU s per 1M records |")
    print("| --- | ---: | ---: |")
    for what, rate, cpu in rows:
        print(f"| {what} | {rate:,.0f} | {cpu:.1f} |")
    by = {what: rate for what, rate, _ in rows}
    for client, guarantee, drift, memory, checkout, setup in runs:
        bare = "bare kafka-python" if client == "kafka-python" else "bare confluent-kafka"
        name = named(client, guarantee, drift, memory, checkout, setup)
        print(f"{name} / {bare}: {by[name] / by[bare]:.2f}")
        if client == "confluent":
            print(f"{name} / {BARE_TUNED}: {by[name] / by[BARE_TUNED]:.2f}")
        if checkout is not None:
            this = named(client, guarantee, drift, memory, None, setup)
            print(f"{this} / {name}: {by[this] / by[name]:.2f}")
        if setup != "default" and "default" in setups:
            plain = named(client, guarantee, drift, memory, checkout)
            print(f"{name} / {plain}: {by[name] / by[plain]:.2f}")
    for client, guarantee, drift, memory, checkout, setup in runs if len(drifts) > 1 else ():
        if checkout is not None or setup != setups[0]:
            continue
        if drift:
            on, off = (
                named(client, guarantee, True, memory),
                named(client, guarantee, False, memory),
            )
            print(f"{client} {guarantee}: drift on / drift off records/s: {by[on] / by[off]:.2f}")
    for guarantee in guarantees if len(clients) == 2 else ():
        ratio = by[named("confluent", guarantee)] / by[named("kafka-python", guarantee)]
        print(f"{named('confluent', guarantee)} / {named('kafka-python', guarantee)}: {ratio:.2f}")
    for client in clients if len(guarantees) > 1 else ():
        ratio = by[named(client, "exactly_once")] / by[named(client, "at_least_once")]
        print(f"{client}: exactly_once / at_least_once records/s: {ratio:.2f}")
    print()
    print("| consumer | offered records/s | p50 ms | p99 ms | worker CPU (one core) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for what, load, p50, p99, share in latency:
        shown = "" if share != share else f"{share:.0%}"
        print(f"| {what} | {load:,.0f} | {p50 * 1e3:.0f} | {p99 * 1e3:.0f} | {shown} |")
    for name, mib in rss.items():
        print(f"{name} peak RSS: {mib:.0f} MiB")
    return 0


BARE_TUNED = f"bare confluent-kafka, fetch.queue.backoff.ms={FETCH_QUEUE_BACKOFF_MS}"

#: The embedded broker's process, when the benchmark started one (its CPU is reported too).
BROKER: dict[str, int] = {}

#: Worker set-ups (``--setups``): extra settings, given the run's scores topic.
SETUPS = {
    "default": lambda scores, model: {},
    "entity_recent": lambda scores, model: {"ANOMALY_THRESHOLD_MODE": "entity_recent"},
    "scores": lambda scores, model: {"ANOMALY_SCORES_TOPIC": scores},
    "telemetry": lambda scores, model: {
        "ANOMALY_THRESHOLD_MODE": "entity_recent",
        "ANOMALY_SCORES_TOPIC": scores,
    },
    "telemetry_batch": lambda scores, model: {
        "ANOMALY_THRESHOLD_MODE": "entity_recent",
        "ANOMALY_SCORES_TOPIC": scores,
        "ANOMALY_SCORES_FORMAT": "batch",
    },
    # Per-entity thresholds and a bundle with a baseline for every entity of the load.
    "per_entity": lambda scores, model: {
        "ANOMALY_THRESHOLD_MODE": "entity_recent",
        "ANOMALY_MODEL_PATH": f"{model}-per-entity",
    },
    # All the telemetry options at once: per-entity baselines and thresholds, every score.
    "everything": lambda scores, model: {
        "ANOMALY_THRESHOLD_MODE": "entity_recent",
        "ANOMALY_MODEL_PATH": f"{model}-per-entity",
        "ANOMALY_SCORES_TOPIC": scores,
        "ANOMALY_SCORES_FORMAT": "batch",
    },
}


def entity_traffic(entities: int, rng: np.random.Generator, rows: int = 300) -> Table:
    """Normal rows of the load's entities (``e0``, ``e1``, ...), ``rows`` each: the cost of
    routing does not depend on how many rows a baseline learnt from, but its calibration does
    (24 rows each alerted on 15% of normal records, and producing those alerts cost more than
    the routing; 300 rows: 1.7%)."""
    X = rng.normal(size=(entities * rows, D)).astype(np.float32)
    names: list[str | None] = [f"e{i % entities}" for i in range(len(X))]
    return Table(X, tuple(f"f{i}" for i in range(D)), entities=names)


def sample(count: int, pid: int) -> tuple[float, int, float, float]:
    """(time, count, CPU seconds of ``pid``, CPU seconds of the embedded broker) now."""
    broker = cpu_seconds(BROKER["pid"]) if "pid" in BROKER else float("nan")
    return time.perf_counter(), count, cpu_seconds(pid), broker


def steady_rate(timeline: list[tuple[float, int, float, float]], n: int) -> tuple[float, float]:
    """(records/s, CPU s per 1M records) between the moments 5% and 95% of ``n`` were counted.

    ``timeline`` holds :func:`sample` rows; the broker's CPU over the same span is printed.
    """
    low = next(row for row in timeline if row[1] >= 0.05 * n)
    high = next(row for row in timeline if row[1] >= 0.95 * n)
    records = high[1] - low[1]
    span = high[0] - low[0]
    print(
        f"  broker CPU meanwhile: {(high[3] - low[3]) / span:.0%} of a core, "
        f"{(high[3] - low[3]) / records * 1e6:.1f} s per 1M records",
        flush=True,
    )
    return records / span, (high[2] - low[2]) / records * 1e6


def fill(
    bootstrap: str,
    topic: str,
    n: int,
    rng: np.random.Generator,
    anomaly_share: float,
    entities: int,
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
            {"id": f"r{i}", "ts": now, "entity": f"e{i % entities}", "features": X[i].tolist()}
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
    consumer = KafkaConsumer(**consumer_config(settings.connection(), settings.consumer_options()))
    consumer.subscribe([topic])
    count, timeline = 0, []
    deadline = time.monotonic() + 300
    while count < n and time.monotonic() < deadline:
        polled = consumer.poll(timeout_ms=100, max_records=settings.batch_max_records)
        count += sum(len(records) for records in polled.values())
        timeline.append(sample(count, os.getpid()))
    consumer.close(autocommit=False)
    assert count >= n
    return steady_rate(timeline, n)


def bare_confluent(
    bootstrap: str, topic: str, group: str, n: int, extra: dict[str, Any] | None = None
) -> tuple[float, float]:
    """A bare confluent-kafka drain that reads every value (as any consumer must);
    librdkafka's defaults unless ``extra`` says otherwise."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            **(extra or {}),
        }
    )
    consumer.subscribe([topic])
    count, timeline = 0, []
    deadline = time.monotonic() + 300
    while count < n and time.monotonic() < deadline:
        messages = consumer.consume(num_messages=5000, timeout=0.1)
        count += sum(1 for m in messages if m.error() is None and m.value() is not None)
        timeline.append(sample(count, os.getpid()))
    consumer.close()
    assert count >= n
    return steady_rate(timeline, n)


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


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
    timeline: list[tuple[float, int, float, float]] = []
    while (consumed := scrape(port, "anomaly_records_consumed_total")) < n:
        timeline.append(sample(int(consumed), pid))
        assert time.monotonic() < deadline, f"consumed only {consumed} of {n}"
        time.sleep(0.1)  # scraping /metrics costs the worker CPU: not too often
    timeline.append(sample(int(consumed), pid))
    # Let the commit of the last records land before offering load.
    time.sleep(2)
    return steady_rate(timeline, n)


def offered_load(bootstrap, topic, alerts, rate, seconds, pid, entities):  # type: ignore[no-untyped-def]
    """Offer ``rate`` records/s: (worker p50, p99, CPU share, bare consumer p50, p99)."""
    tag = f"lat{uuid.uuid4().hex[:6]}-"
    alert_latency: list[tuple[float, float]] = []  # (received at, latency)
    bare_latency: list[tuple[float, float]] = []
    stop = threading.Event()

    def read(topic_name: str, into: list[tuple[float, float]], group: str) -> None:
        # kafka-python readers: on the embedded broker a librdkafka reader adds ~25 ms at
        # p50 by itself (measured side by side), which would hide what the worker adds.
        reader = KafkaConsumer(
            topic_name,
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="latest",
            isolation_level="read_committed",  # exactly_once: readable once committed
            fetch_max_wait_ms=10,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            enable_auto_commit=False,
        )
        marker = tag.encode()
        while not stop.is_set():
            for records in reader.poll(timeout_ms=50).values():
                now = time.time()
                for r in records:
                    if r.value and marker in r.value:
                        into.append((now, now - json.loads(r.value)["ts"]))
        reader.close()

    readers = [
        threading.Thread(target=read, args=(alerts, alert_latency, f"r-{tag}"), daemon=True),
        threading.Thread(target=read, args=(topic, bare_latency, f"b-{tag}"), daemon=True),
    ]
    for reader in readers:
        reader.start()
    time.sleep(8)  # both readers joined their groups
    # The load comes from its own process, so that producing never delays the readers here.
    load = multiprocessing.get_context("spawn").Process(
        target=produce_load, args=(bootstrap, topic, rate, seconds, tag, entities)
    )
    load.start()
    time.sleep(min(2.0, seconds / 4))  # the load process starts up
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    load.join(seconds + 60)
    share = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    time.sleep(3)
    stop.set()
    for reader in readers:
        reader.join(10)
    assert alert_latency and bare_latency, "no latency samples"
    if seconds >= 120:  # a held load: is the latency stable? p50 / p99 per minute
        start = min(t for t, _ in bare_latency)
        for minute in range(int(seconds // 60)):
            window = (start + 60 * minute, start + 60 * (minute + 1))
            w = [x for t, x in alert_latency if window[0] <= t < window[1]]
            b = [x for t, x in bare_latency if window[0] <= t < window[1]]
            if w and b:
                print(
                    f"    minute {minute + 1}: worker p50 {np.percentile(w, 50) * 1e3:.0f} "
                    f"p99 {np.percentile(w, 99) * 1e3:.0f} ms; bare p50 "
                    f"{np.percentile(b, 50) * 1e3:.0f} p99 {np.percentile(b, 99) * 1e3:.0f} ms",
                    flush=True,
                )
    a = np.asarray([x for _, x in alert_latency])
    b = np.asarray([x for _, x in bare_latency])
    return (
        float(np.percentile(a, 50)),
        float(np.percentile(a, 99)),
        share,
        float(np.percentile(b, 50)),
        float(np.percentile(b, 99)),
    )


def produce_load(
    bootstrap: str, topic: str, rate: float, seconds: float, tag: str, entities: int
) -> None:
    """``rate`` records/s for ``seconds`` (5% anomalous), each stamped with its send time."""
    rng = np.random.default_rng()
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 2, "queue.buffering.max.messages": 1_000_000}
    )
    started, sent = time.monotonic(), 0
    while (now := time.monotonic()) < started + seconds:
        due = int((now - started) * rate) - sent
        if due > 0:
            X = rng.normal(size=(due, D)).round(5)
            X[rng.random(due) < 0.05] += 8.0
            for i in range(due):
                body = {
                    "id": f"{tag}{sent + i}",
                    "ts": time.time(),
                    "entity": f"e{(sent + i) % entities}",
                    "features": X[i].tolist(),
                }
                value = json.dumps(body, separators=(",", ":")).encode()
                while True:
                    try:
                        producer.produce(topic, value)
                        break
                    except BufferError:
                        producer.poll(0.01)
            sent += due
        producer.poll(0)
        time.sleep(0.001)
    producer.flush(30)


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
