"""``anomaly-demo``: the whole product on one machine, no external services.

Starts the embedded broker, trains on a window of normal synthetic traffic,
serves the model with a real ``anomaly-worker`` process, streams live traffic
with labelled anomalies through it, and reports what was caught.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from demo.broker import LocalBroker, free_port, stop_process
from demo.traffic import FEATURES, TrafficGenerator
from training.data import Table
from training.fit import FitConfig, fit_bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anomaly-demo", description=__doc__)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of live traffic")
    parser.add_argument("--rate", type=float, default=2000.0, help="records per second")
    parser.add_argument(
        "--bootstrap-servers", help="use this Kafka cluster instead of the embedded broker"
    )
    parser.add_argument("--metrics-port", type=int, default=9108, help="the worker's /metrics port")
    parser.add_argument(
        "--workdir", type=Path, default=Path("demo-output"), help="model and worker log go here"
    )
    parser.add_argument(
        "--target-alert-rate", type=float, default=0.002, help="false alarms the threshold allows"
    )
    args = parser.parse_args(argv)

    with ExitStack() as stack:
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
        else:
            broker = stack.enter_context(LocalBroker())
            bootstrap = broker.bootstrap_servers
            say(f"embedded Kafka-protocol broker (Tansu) on {bootstrap}")
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:6]
        topics = {
            "input": f"demo-features-{tag}",
            "alerts": f"demo-anomalies-{tag}",
            "dlq": f"demo-dlq-{tag}",
        }
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(t, 3, 1) for t in topics.values()])
        admin.close()
        say(f"topics: {', '.join(topics.values())}")

        generator = TrafficGenerator(seed=1)
        say("training on 20,000 rows of normal traffic ...")
        started = time.perf_counter()
        config = FitConfig(seed=1, target_alert_rate=args.target_alert_rate)
        metadata = fit_bundle(
            Table(generator.normal_rows(20_000), FEATURES), workdir / "model", config
        )
        say(
            f"model {metadata.version}: threshold {metadata.threshold:.4g} "
            f"(target alert rate {metadata.calibration.target_alert_rate:.1%}), "
            f"trained in {time.perf_counter() - started:.1f}s"
        )

        port = args.metrics_port or free_port()
        env = {
            **os.environ,
            "ANOMALY_BOOTSTRAP_SERVERS": bootstrap,
            "ANOMALY_INPUT_TOPIC": topics["input"],
            "ANOMALY_ALERT_TOPIC": topics["alerts"],
            "ANOMALY_DLQ_TOPIC": topics["dlq"],
            "ANOMALY_GROUP_ID": f"demo-{tag}",
            "ANOMALY_MODEL_PATH": str(workdir / "model"),
            "ANOMALY_METRICS_PORT": str(port),
            "ANOMALY_SESSION_TIMEOUT_SECONDS": "6",
            "ANOMALY_LOG_FORMAT": "json",
        }
        log_path = workdir / "worker.log"
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=env,
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        stack.callback(stop_process, worker)
        if not _wait_ready(port, worker, 60):
            say(f"the worker did not become ready; its log: {log_path}")
            return 1
        say(f"worker ready; metrics at http://127.0.0.1:{port}/metrics, log in {log_path}")

        alerts = AlertCollector(bootstrap, topics["alerts"])
        alerts.start()
        stack.callback(alerts.stop)
        truth = stream(
            bootstrap, topics["input"], generator, args.rate, args.duration, port, alerts
        )
        _drain(port, len(truth), 20)
        time.sleep(1.0)
        code = stop_process(worker)
        summary(truth, alerts, _last_metrics)
        return 0 if code == 0 else 1


_last_metrics: dict[str, float] = {}


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def stream(
    bootstrap: str,
    topic: str,
    generator: TrafficGenerator,
    rate: float,
    duration: float,
    port: int,
    alerts: AlertCollector,
) -> dict[str, str]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    truth: dict[str, str] = {}
    started = time.monotonic()
    next_report = started + 2.0
    sent = 0
    while (now := time.monotonic()) < started + duration:
        due = int((now - started) * rate) - sent
        if due > 0:
            for event in generator.events(due, time.time()):
                producer.send(topic, key=event.id.encode(), value=event.value)
                truth[event.id] = event.kind
            sent += due
        if now >= next_report:
            report(port, truth, alerts, now - started)
            next_report += 2.0
        time.sleep(0.01)
    producer.flush()
    producer.close()
    return truth


def scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return _last_metrics
    values: dict[str, float] = {}
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "anomaly_end_to_end_latency_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name.startswith("anomaly_records_invalid_total"):
                values["invalid"] = values.get("invalid", 0.0) + s.value
            else:
                values.setdefault(s.name, s.value)
    values["p99_latency_seconds"] = _quantile(sorted(buckets), 0.99)
    _last_metrics.clear()
    _last_metrics.update(values)
    return values


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            share = (rank - previous_count) / max(count - previous_count, 1e-9)
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, count
    return previous_bound


def report(port: int, truth: dict[str, str], alerts: AlertCollector, elapsed: float) -> None:
    m = scrape(port)
    precision, recall = score(truth, alerts.ids())
    p99_ms = m["p99_latency_seconds"] * 1000
    say(
        f"t={elapsed:4.0f}s consumed={m.get('anomaly_records_consumed_total', 0):8.0f} "
        f"alerts={m.get('anomaly_alerts_total', 0):5.0f} dead-letters={m.get('invalid', 0):3.0f} "
        f"precision={precision:.2f} recall={recall:.2f} p99 latency={p99_ms:.0f} ms"
    )


def score(truth: dict[str, str], alerted: set[str]) -> tuple[float, float]:
    positives = {i for i, k in truth.items() if k in ("spike", "broken_correlation")}
    hits = len(positives & alerted)
    precision = hits / len(alerted) if alerted else float("nan")
    recall = hits / len(positives) if positives else float("nan")
    return precision, recall


def summary(truth: dict[str, str], alerts: AlertCollector, metrics: dict[str, float]) -> None:
    alerted = alerts.ids()
    precision, recall = score(truth, alerted)
    kinds = {k: sum(1 for v in truth.values() if v == k) for k in sorted(set(truth.values()))}
    caught = {
        k: sum(1 for i, v in truth.items() if v == k and i in alerted)
        for k in ("spike", "broken_correlation")
    }
    p99_ms = metrics.get("p99_latency_seconds", float("nan")) * 1000
    print("\n=== summary ===")
    print(f"records sent:        {len(truth)}  {kinds}")
    print(f"records consumed:    {metrics.get('anomaly_records_consumed_total', 0):.0f}")
    dead = metrics.get("invalid", 0)
    print(f"dead letters:        {dead:.0f} (malformed sent: {kinds.get('malformed', 0)})")
    print(f"alerts:              {len(alerted)}  caught by kind: {caught}")
    print(f"precision / recall:  {precision:.3f} / {recall:.3f}")
    print(f"p99 end-to-end:      {p99_ms:.0f} ms")


class AlertCollector(threading.Thread):
    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = KafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=100
        )
        self._ids: set[str] = set()
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for batch in self.consumer.poll(timeout_ms=200).values():
                with self._lock:
                    self._ids.update(json.loads(r.value)["id"] for r in batch)

    def ids(self) -> set[str]:
        with self._lock:
            return set(self._ids)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.consumer.close()


def _wait_ready(port: int, worker: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _drain(port: int, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scrape(port).get("anomaly_records_consumed_total", 0) >= expected:
            return
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
