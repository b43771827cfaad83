"""``anomaly-demo``: the whole product on one machine, no external services.

1. starts the embedded Kafka-protocol broker (or uses ``--bootstrap-servers``);
2. streams a first window of normal synthetic telemetry (daily cycle, correlated features);
3. trains on that window read back from Kafka, registers the model and promotes it;
4. runs a real ``anomaly-worker`` process serving the registry;
5. streams live traffic with labelled anomalies (spikes, broken correlations, a drift
   episode, malformed records) and shows throughput, alerts, precision/recall and p99 latency;
6. stops after ``--duration`` or on Ctrl-C, and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table as RichTable

from demo.broker import LocalBroker, free_port, stop_process
from demo.traffic import FEATURES, TrafficGenerator
from training.config import FitConfig
from training.kafka_window import normal_traffic, read_window
from training.promotion import GateConfig, promote, register
from training.publish import WritableRegistry
from worker.kafka.options import Connection

console = Console()
POSITIVE_KINDS = ("spike", "broken_correlation", "drift")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="anomaly-demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of live traffic")
    parser.add_argument("--rate", type=float, default=2000.0, help="records per second")
    parser.add_argument(
        "--bootstrap-servers", help="a Kafka cluster instead of the embedded broker"
    )
    parser.add_argument("--metrics-port", type=int, default=9108, help="the worker's /metrics port")
    parser.add_argument(
        "--workdir", type=Path, default=Path("demo-output"), help="registry and worker log go here"
    )
    parser.add_argument(
        "--target-alert-rate",
        type=float,
        default=0.002,
        help="false alarms the threshold allows (share of normal records)",
    )
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ExitStack() as stack:
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
        else:
            bootstrap = stack.enter_context(LocalBroker()).bootstrap_servers
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

        generator = TrafficGenerator(seed=1)
        say("streaming a first window of normal traffic (20,000 records, one simulated day) ...")
        first_window(bootstrap, topics["input"], generator)
        registry = WritableRegistry.create(workdir / f"registry-{tag}")
        version = train_and_promote(
            bootstrap, topics["input"], f"demo-{tag}", registry, args.target_alert_rate
        )

        port = args.metrics_port or free_port()
        log_path = workdir / "worker.log"
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env={
                **os.environ,
                "ANOMALY_BOOTSTRAP_SERVERS": bootstrap,
                "ANOMALY_INPUT_TOPIC": topics["input"],
                "ANOMALY_ALERT_TOPIC": topics["alerts"],
                "ANOMALY_DLQ_TOPIC": topics["dlq"],
                "ANOMALY_GROUP_ID": f"demo-{tag}",
                "ANOMALY_MODEL_PATH": str(registry.root),
                "ANOMALY_METRICS_PORT": str(port),
                "ANOMALY_SESSION_TIMEOUT_SECONDS": "6",
                "ANOMALY_LOG_FORMAT": "json",
                # Drift over the last ~2 s of traffic, so the episode shows within a short run.
                "ANOMALY_DRIFT_WINDOW_RECORDS": str(max(1_000, int(2 * args.rate))),
            },
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        stack.callback(stop_process, worker)
        if not wait_ready(port, worker, 60):
            say(f"the worker did not become ready; its log: {log_path}")
            return 1
        say(f"worker serving model {version}; log in {log_path}")
        say(f"metrics at http://127.0.0.1:{port}/metrics while the demo runs")

        alerts = AlertCollector(bootstrap, topics["alerts"])
        alerts.start()
        stack.callback(alerts.stop)
        truth, drift = stream(bootstrap, topics["input"], generator, args, port, alerts, stop)
        drain(port, len(truth), 20)
        time.sleep(1.0)
        metrics = scrape(port)
        # Every alert the worker produced is read back before precision and recall are
        # computed (the reader lags the worker on a loaded machine).
        alerts.wait_for(int(metrics.get("anomaly_alerts_total", 0)), 20)
        code = stop_process(worker)
        summary(truth, alerts.ids(), metrics, drift)
        return 0 if code == 0 else 1


def say(text: str) -> None:
    console.print(f"[bold cyan][demo][/] {text}")


def first_window(bootstrap: str, topic: str, generator: TrafficGenerator) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks="all")
    start = time.time() - generator.day_seconds
    # Traffic flows through the day, as it does live: 1,000 instants, 20 records each. (20
    # instants of 1,000 records left gaps in the daily cycle that live traffic fell into:
    # the model then missed up to a third of the drift episode's records at the cycle's low.)
    instants = 1_000
    for chunk in range(instants):
        when = start + chunk * generator.day_seconds / instants
        for event in generator.events(20, when, anomaly_rate=0.0, malformed_rate=0.0):
            producer.send(topic, key=event.id.encode(), value=event.value)
    producer.flush()
    producer.close()


def train_and_promote(
    bootstrap: str, topic: str, group: str, registry: WritableRegistry, target: float
) -> str:
    started = time.perf_counter()
    connection = Connection("kafka-python", (bootstrap,), client_id="anomaly-demo")
    records = read_window(connection, topic, last=100_000)
    # The worker's group starts after the training window: it serves the live traffic.
    ends: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        ends[tp] = max(ends.get(tp, 0), r.offset + 1)
    committer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    committer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in ends.items()})
    committer.close(autocommit=False)
    traffic = normal_traffic(records, FEATURES, alerted=set(), current=None)
    version = register(registry, traffic.table, FitConfig(seed=1, target_alert_rate=target))
    promote(
        registry, version, None, GateConfig(), force=True
    )  # the first model: nothing to gate against
    say(
        f"trained on {len(traffic.table.X):,} rows read back from Kafka in "
        f"{time.perf_counter() - started:.1f}s; registered and promoted {version} "
        f"(target false-alarm rate {target:.1%})"
    )
    return version


def stream(
    bootstrap: str,
    topic: str,
    generator: TrafficGenerator,
    args: argparse.Namespace,
    port: int,
    alerts: AlertCollector,
    stop: threading.Event,
) -> tuple[dict[str, str], dict[str, float]]:
    """Stream live traffic; the events sent by id, and the largest score drift seen before the
    drift episode (``before``) and from its start on (``since``)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    truth: dict[str, str] = {}
    drift = {"before": float("nan"), "since": float("nan")}
    started = time.monotonic()
    # Live traffic begins a simulated day (rising load), so the drift episode (the run's
    # middle third) meets the same part of the daily cycle in every run, whatever the clock.
    generator.start_day(time.time())
    sent = 0
    with Live(
        view(scrape(port), truth, alerts.ids(), 0.0), console=console, refresh_per_second=2
    ) as live:
        next_view = started
        while not stop.is_set() and (now := time.monotonic()) < started + args.duration:
            progress = (now - started) / args.duration
            due = int((now - started) * args.rate) - sent
            if due > 0:
                drifting = 1 / 3 <= progress < 2 / 3
                for event in generator.events(due, time.time(), drifting=drifting):
                    producer.send(topic, key=event.id.encode(), value=event.value)
                    truth[event.id] = event.kind
                sent += due
            if now >= next_view:
                metrics = scrape(port)
                live.update(view(metrics, truth, alerts.ids(), now - started))
                phase = "before" if progress < 1 / 3 else "since"
                value = metrics.get("anomaly_score_drift", float("nan"))
                drift[phase] = float(np.fmax(drift[phase], value))  # NaN: no value yet
                next_view = now + 0.5
            time.sleep(0.01)
    producer.flush()
    producer.close()
    return truth, drift


def view(m: dict[str, Any], truth: dict[str, str], alerted: set[str], elapsed: float) -> RichTable:
    precision, recall = score(truth, alerted)
    table = RichTable(
        title=f"anomaly-worker live ({elapsed:.0f}s)", show_header=False, min_width=52
    )
    table.add_column(style="bold")
    table.add_column(justify="right")
    rate = m.get("anomaly_records_consumed_total", 0.0) / max(elapsed, 1e-9) if elapsed else 0.0
    table.add_row("records sent", f"{len(truth):,}")
    table.add_row("records consumed", f"{m.get('anomaly_records_consumed_total', 0):,.0f}")
    table.add_row("records/s (average)", f"{rate:,.0f}")
    table.add_row("alerts", f"{m.get('anomaly_alerts_total', 0):,.0f}")
    table.add_row("dead letters", f"{m.get('invalid', 0):,.0f}")
    table.add_row("precision / recall", f"{precision:.2f} / {recall:.2f}")
    table.add_row(
        "p99 event -> alert", f"{m.get('p99_latency_seconds', float('nan')) * 1000:.0f} ms"
    )
    # The score's drift, not the features': the demo squeezes a day into two minutes, so a
    # few seconds of traffic hold a narrow slice of the daily cycle each feature follows.
    table.add_row("score drift (PSI)", band(m.get("anomaly_score_drift", float("nan"))))
    feature, share = m.get("outside_feature", ""), m.get("outside_share", 0.0)
    table.add_row(f"outside training range ({feature or '-'})", f"{share:.1%}")
    return table


def band(psi: float) -> str:
    """A PSI value with its band: < 0.1 stable, 0.1-0.25 moderate, > 0.25 significant."""
    if psi != psi:
        return "-"
    if psi < 0.1:
        return f"[green]{psi:.2f} stable[/]"
    if psi <= 0.25:
        return f"[yellow]{psi:.2f} moderate[/]"
    return f"[bold red]{psi:.2f} DRIFT[/]"


def scrape(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values: dict[str, Any] = {}
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "anomaly_end_to_end_latency_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name == "anomaly_records_invalid_total":
                values["invalid"] = values.get("invalid", 0.0) + s.value
            elif s.name == "anomaly_feature_out_of_range_ratio":
                if s.value > values.get("outside_share", 0.0):
                    values["outside_share"] = s.value
                    values["outside_feature"] = s.labels["feature"]
            else:
                values.setdefault(s.name, s.value)
    values["p99_latency_seconds"] = quantile(sorted(buckets), 0.99)
    return values


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus-style histogram_quantile over cumulative (upper bound, count) pairs."""
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


def score(truth: dict[str, str], alerted: set[str]) -> tuple[float, float]:
    positives = {i for i, k in truth.items() if k in POSITIVE_KINDS}
    hits = len(positives & alerted)
    precision = hits / len(alerted) if alerted else float("nan")
    recall = hits / len(positives) if positives else float("nan")
    return precision, recall


def summary(
    truth: dict[str, str], alerted: set[str], metrics: dict[str, Any], drift: dict[str, float]
) -> None:
    precision, recall = score(truth, alerted)
    kinds = {k: sum(1 for v in truth.values() if v == k) for k in sorted(set(truth.values()))}
    caught = {
        k: sum(1 for i, v in truth.items() if v == k and i in alerted) for k in POSITIVE_KINDS
    }
    p99_ms = metrics.get("p99_latency_seconds", float("nan")) * 1000
    dead = metrics.get("invalid", 0)
    print("\n=== summary ===")
    print(f"records sent:        {len(truth)}  {kinds}")
    print(f"records consumed:    {metrics.get('anomaly_records_consumed_total', 0):.0f}")
    print(f"dead letters:        {dead:.0f} (malformed sent: {kinds.get('malformed', 0)})")
    produced = metrics.get("anomaly_alerts_total", 0)
    print(
        f"alerts:              {len(alerted)} read back of {produced:.0f} produced  "
        f"caught by kind: {caught}"
    )
    print(f"precision / recall:  {precision:.3f} / {recall:.3f}")
    print(f"p99 end-to-end:      {p99_ms:.0f} ms")
    print(
        f"score drift (PSI):   {drift['before']:.2f} at most before the drift episode, "
        f"{drift['since']:.2f} from its start (0.25: significant)"
    )


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

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ids()) < count and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.consumer.close()


def wait_ready(port: int, worker: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def drain(port: int, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scrape(port).get("anomaly_records_consumed_total", 0) >= expected:
            return
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
