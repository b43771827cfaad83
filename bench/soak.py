"""Soak: a worker under a fixed offered load with malformed and oversized records mixed in.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 2000] [--bootstrap-servers HOST:PORT]

Offers ``--rate`` 8-feature records/s (5% anomalous, 1% malformed, one oversized 1.1 MB record
every 10 s) to a real ``anomaly-worker`` process for ``--minutes``. Every 10 s it samples the
worker's RSS, open file descriptors and threads; every alert's event -> alert latency is
bucketed by minute. Prints a Markdown table (one row per minute) and the growth of RSS, file
descriptors and threads after the warm-up (the first ``--warmup-minutes``, default 2) against
the 5% bound. Exit code 1 if a bound is broken or the worker died.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from confluent_kafka import Producer
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic

from demo.broker import LocalBroker, free_port, stop_process
from training.config import FitConfig
from training.data import Table
from training.fit import fit_bundle

D = 8
SAMPLE_SECONDS = 10.0
GROWTH_BOUND = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=2_000.0, help="records/s offered")
    parser.add_argument("--bootstrap-servers")
    parser.add_argument("--output", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()

    with ExitStack() as stack:
        broker = None if args.bootstrap_servers else stack.enter_context(LocalBroker())
        bootstrap = args.bootstrap_servers or broker.bootstrap_servers  # type: ignore[union-attr]
        broker_pid = broker.pid if broker is not None else None
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        tag = uuid.uuid4().hex[:8]
        topic, alerts, dlq = f"soak-{tag}", f"soak-alerts-{tag}", f"soak-dlq-{tag}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(t, 4, 1) for t in (topic, alerts, dlq)])
        admin.close()
        rng = np.random.default_rng(0)
        names = tuple(f"f{i}" for i in range(D))
        fit_bundle(
            Table(rng.normal(size=(20_000, D)).astype(np.float32), names),
            workdir / "model",
            FitConfig(epochs=10, seed=0),
        )
        port = free_port()
        env = {
            **os.environ,
            "ANOMALY_BOOTSTRAP_SERVERS": bootstrap,
            "ANOMALY_INPUT_TOPIC": topic,
            "ANOMALY_ALERT_TOPIC": alerts,
            "ANOMALY_DLQ_TOPIC": dlq,
            "ANOMALY_GROUP_ID": f"soak-{tag}",
            "ANOMALY_MODEL_PATH": str(workdir / "model"),
            "ANOMALY_METRICS_PORT": str(port),
            "ANOMALY_METRICS_HOST": "127.0.0.1",
            "ANOMALY_SESSION_TIMEOUT_SECONDS": "6",
            "ANOMALY_DEVICE": "cpu",
            "ANOMALY_LOG_LEVEL": "ERROR",
        }
        worker = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env)
        stack.callback(stop_process, worker)

        latencies: dict[int, list[float]] = defaultdict(list)
        stop = threading.Event()
        started = time.time()
        reader = threading.Thread(
            target=read_alerts, args=(bootstrap, alerts, started, latencies, stop), daemon=True
        )
        reader.start()
        samples = offer(bootstrap, topic, args, rng, (worker.pid, broker_pid), started)
        stop.set()
        reader.join(timeout=30)
        alive = worker.poll() is None
        code = stop_process(worker)

    table, ok = report(samples, latencies, args)
    print(table)
    if args.output:
        args.output.write_text(table)
    print(f"worker alive to the end: {alive}; exit code after SIGTERM: {code}")
    return 0 if ok and alive and code == 0 else 1


def offer(bootstrap, topic, args, rng, pids, started):  # type: ignore[no-untyped-def]
    """Produce at the offered rate for the whole run, sampling the worker every 10 s."""
    pid, broker_pid = pids
    cpu_before = (cpu_seconds(pid), cpu_seconds(broker_pid), time.time())
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 4e6})
    samples = []
    sent, next_sample, next_oversized = 0, 0.0, 10.0
    pad = "x" * 1_100_000
    end = args.minutes * 60
    while (elapsed := time.time() - started) < end:
        due = int(elapsed * args.rate) - sent
        for i in range(max(due, 0)):
            n = sent + i
            if n % 100 == 7:
                value = b'{"features": [1, 2, "three"]}'
            else:
                features = rng.normal(size=D)
                if rng.random() < 0.05:
                    features += 8.0
                value = json.dumps(
                    {"id": f"s{n}", "ts": time.time(), "features": features.round(5).tolist()}
                ).encode()
            while True:
                try:
                    producer.produce(topic, value)
                    break
                except BufferError:
                    producer.poll(0.05)
        sent += max(due, 0)
        if elapsed >= next_oversized:
            producer.produce(topic, ('{"features": [], "pad": "' + pad + '"}').encode())
            next_oversized += 10.0
        if elapsed >= next_sample:
            cpu_now = (cpu_seconds(pid), cpu_seconds(broker_pid), time.time())
            span = cpu_now[2] - cpu_before[2] or 1.0
            shares = ((cpu_now[0] - cpu_before[0]) / span, (cpu_now[1] - cpu_before[1]) / span)
            broker_rss = process_sample(broker_pid)[0] if broker_pid else float("nan")
            samples.append((elapsed, *process_sample(pid), *shares, broker_rss))
            cpu_before = cpu_now
            next_sample += SAMPLE_SECONDS
        producer.poll(0)
        time.sleep(0.002)
    producer.flush(60)
    return samples


def read_alerts(bootstrap, topic, started, latencies, stop):  # type: ignore[no-untyped-def]
    reader = KafkaConsumer(topic, bootstrap_servers=bootstrap, fetch_max_wait_ms=50)
    try:
        while not stop.is_set():
            for records in reader.poll(timeout_ms=200).values():
                for r in records:
                    body = json.loads(r.value)
                    minute = int((body["ts"] - started) // 60)
                    latencies[minute].append(r.timestamp / 1000 - body["ts"])
    finally:
        reader.close()


def cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of a process (nan without one)."""
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_sample(pid: int) -> tuple[float, int, int]:
    """RSS (MiB), open file descriptors, threads of a process."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {line.split(":")[0]: line.split(":")[1].split() for line in status}
    rss = int(fields["VmRSS"][0]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"][0])


def report(samples, latencies, args):  # type: ignore[no-untyped-def]
    rows = [
        "| minute | RSS MiB | open fds | threads | worker CPU | broker CPU | broker RSS MiB "
        "| alerts | p50 ms | p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_minute: dict[int, list[tuple[float, ...]]] = defaultdict(list)
    for elapsed, *values in samples:
        by_minute[int(elapsed // 60)].append(tuple(values))
    for minute in sorted(by_minute):
        rss, fds, threads, _, _, broker_rss = by_minute[minute][-1]
        worker_cpu = np.mean([v[3] for v in by_minute[minute]])
        broker_cpu = np.mean([v[4] for v in by_minute[minute]])
        lat = np.asarray(latencies.get(minute, [np.nan]))
        rows.append(
            f"| {minute + 1} | {rss:.0f} | {fds} | {threads} | {worker_cpu:.0%} | {broker_cpu:.0%} "
            f"| {broker_rss:.0f} | {len(latencies.get(minute, []))} "
            f"| {np.nanpercentile(lat, 50) * 1000:.0f} | {np.nanpercentile(lat, 99) * 1000:.0f} |"
        )
    warm = [s for s in samples if s[0] >= args.warmup_minutes * 60]
    ok = True
    lines = []
    if len(warm) >= 2:
        for index, name in ((1, "RSS"), (2, "open fds"), (3, "threads")):
            first, peak = warm[0][index], max(s[index] for s in warm)
            growth = peak / first - 1
            within = growth <= GROWTH_BOUND
            ok &= within
            lines.append(
                f"{name}: {first:.0f} after warm-up, peak {peak:.0f} (+{growth:.1%}; "
                f"bound +{GROWTH_BOUND:.0%}: {'ok' if within else 'BROKEN'})"
            )
    header = (
        f"{args.rate:,.0f} records/s offered for {args.minutes:g} min "
        "(5% anomalous, 1% malformed, a 1.1 MB oversized record every 10 s); "
        f"{os.cpu_count()} cores\n\n"
    )
    return header + "\n".join(rows) + "\n\n" + "\n".join(lines) + "\n", ok


if __name__ == "__main__":
    sys.exit(main())
