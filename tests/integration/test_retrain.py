"""Retraining from a window of Kafka traffic: only normal rows are learned from, then gated."""

import json
import random

import pytest

from tests.helpers import NAMES, record, standard_normal_reference, write_distance_bundle
from tests.integration.conftest import CLIENTS
from tests.integration.kafka_helpers import produce
from training.cli import main as train_main
from training.publish import WritableRegistry

pytestmark = pytest.mark.integration


def test_retrain_excludes_flagged_traffic_registers_and_promotes(
    kafka_bootstrap, topics, tmp_path, capsys
):
    registry = WritableRegistry.create(tmp_path / "registry")
    registry.add("v1", lambda d: write_distance_bundle(d, threshold=4.0, version="v1"))
    registry.set_current("v1", "initial")

    rng = random.Random(3)

    def normal():
        return [round(rng.uniform(-1, 1), 4) for _ in NAMES]

    values = [record(normal(), id=f"n{i}") for i in range(6000)]
    values += [record([5, 5, 5, 5], id=f"hot{i}") for i in range(40)]  # above v1's threshold
    values += [record(normal(), id=f"lab{i}", label=1) for i in range(30)]  # labelled anomalies
    values += [record(normal(), id=f"al{i}") for i in range(25)]  # already alerted on
    values += [b"{broken"] * 5
    rng.shuffle(values)
    produce(kafka_bootstrap, topics.input, values)
    produce(
        kafka_bootstrap, topics.alerts, [json.dumps({"id": f"al{i}"}).encode() for i in range(25)]
    )

    code = train_main(
        [
            "retrain",
            "--registry",
            str(registry.root),
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic",
            topics.input,
            "--alert-topic",
            topics.alerts,
            "--last",
            "100000",
            "--epochs",
            "30",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    version = out.split(":")[0].strip()
    assert registry.current() == version != "v1"
    report = json.loads((registry.path_of(version) / "report.json").read_text())
    assert report["rows"]["excluded"] == {
        "invalid:invalid_json": 5,
        "labelled_anomaly": 30,
        "on_alert_topic": 25,
        "above_current_threshold": 40,
    }
    # 80% of the 6000 normal rows trained (the newest 20% gated), 1% trimmed by the robust pass.
    assert (
        report["rows"]["train"]
        + report["rows"]["validation"]
        + report["rows"]["trimmed_by_robust_pass"]
        == 4800
    )
    assert abs(report["rows"]["trimmed_by_robust_pass"] - 0.01 * 3840) <= 1
    assert registry.status(version)["state"] == "promoted"

    # The alert-topic scan is bounded: with --alert-scan-last 1, at most one alert per
    # partition (3) is read, so at most 3 of the 25 alerted ids are excluded.
    code = train_main(
        [
            "retrain",
            *("--registry", str(registry.root), "--bootstrap-servers", kafka_bootstrap),
            *("--topic", topics.input, "--alert-topic", topics.alerts),
            *("--alert-scan-last", "1", "--epochs", "5", "--no-progress"),
        ]
    )
    out = capsys.readouterr().out
    bounded = out.split(":")[0].strip()
    assert bounded != version, out
    report = json.loads((registry.path_of(bounded) / "report.json").read_text())
    assert 1 <= report["rows"]["excluded"]["on_alert_topic"] <= 3


def test_schedule_retrains_every_period_and_stops_on_sigterm(kafka_bootstrap, topics, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from tests.integration.kafka_helpers import wait_for

    rng = random.Random(5)
    produce(
        kafka_bootstrap,
        topics.input,
        [record([rng.uniform(-1, 1) for _ in NAMES]) for _ in range(6000)],
    )
    registry = WritableRegistry.create(tmp_path / "registry")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_")}
    env.update(
        ANOMALY_BOOTSTRAP_SERVERS=kafka_bootstrap,
        ANOMALY_INPUT_TOPIC=topics.input,
        ANOMALY_ALERT_TOPIC=topics.alerts,
    )  # the trainer shares the worker's settings
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "training",
            "schedule",
            "--every",
            "1s",
            "--registry",
            str(registry.root),
            "--epochs",
            "10",
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: len(registry.versions()) >= 2,
            120,
            interval=0.5,
            message="two retraining cycles",
        )
        current = registry.current()
    finally:
        process.send_signal(signal.SIGTERM)
        out = process.communicate(timeout=60)[0].decode()
        print(out)  # the trainer's log, shown when this test fails
    assert current in registry.versions(), out
    assert process.returncode == 0, out
    assert "retraining every 1s" in out


def test_retrain_if_drift_does_nothing_on_stable_traffic_and_retrains_on_shifted(
    kafka_bootstrap, topics, tmp_path, capsys
):
    import numpy as np

    registry = WritableRegistry.create(tmp_path / "registry")
    reference = standard_normal_reference()
    registry.add("v1", lambda d: write_distance_bundle(d, threshold=8.0, drift_reference=reference))
    registry.set_current("v1", "initial")
    rng = np.random.default_rng(7)

    def traffic(n, shift):
        X = rng.normal(size=(n, len(NAMES)))
        X[:, 1] += shift
        return [record(row.round(4).tolist()) for row in X]

    args = [
        "retrain",
        *("--if-drift", "--registry", str(registry.root), "--bootstrap-servers", kafka_bootstrap),
        *("--topic", topics.input, "--no-alert-topic", "--last", "2000"),
        *("--epochs", "5", "--no-progress"),
    ]
    produce(kafka_bootstrap, topics.input, traffic(6_000, 0.0), partition=0)
    assert train_main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("not retrained: feature drift 0.0") and "threshold 0.25" in out, out
    assert registry.versions() == ["v1"]

    produce(kafka_bootstrap, topics.input, traffic(3_000, 1.5), partition=0)  # the newest 2000
    code = train_main(args)
    out = capsys.readouterr().out
    assert code in (0, 3), out  # promoted or not, a candidate was trained
    (version,) = [v for v in registry.versions() if v != "v1"]
    report = json.loads((registry.path_of(version) / "report.json").read_text())
    trigger = report["trigger"]
    assert trigger["threshold"] == 0.25 and trigger["drift"]["feature"] == "mem"
    assert trigger["drift"]["feature_psi"] > 0.25 and trigger["drift"]["records"] == 2_000


@pytest.mark.parametrize("kafka_client", CLIENTS, indirect=True)
def test_the_training_window_is_read_with_the_workers_client(
    kafka_bootstrap, topics, kafka_client, monkeypatch
):
    """ANOMALY_KAFKA_CLIENT picks the client the window is read with; both read the same
    records: each partition's last N below the high-water mark, then those since a time."""
    import time

    from training.commands import kafka_settings, window_config
    from training.kafka_window import read_window

    for partition in range(3):
        early = [record([i, 0, 0, 0], id=f"early{partition}-{i}") for i in range(100)]
        produce(kafka_bootstrap, topics.input, early, partition=partition)
    time.sleep(1.5)
    since = time.time() - 0.5
    ends = {}
    for partition in range(3):
        late = [record([i, 1, 1, 1], id=f"late{partition}-{i}") for i in range(30)]
        ends.update(produce(kafka_bootstrap, topics.input, late, partition=partition))
    monkeypatch.setenv("ANOMALY_KAFKA_CLIENT", kafka_client)
    monkeypatch.setenv("ANOMALY_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("ANOMALY_INPUT_TOPIC", topics.input)
    args = train_parser_args(["--last", "50", "--read-timeout", "60"])
    kafka = kafka_settings(args)
    assert kafka.connection().client == kafka_client
    window = window_config(args)
    records = read_window(kafka.connection(), kafka.input_topic, window.last, None, 60)
    assert len(records) == 50 * 3  # the last 50 of each of the 3 partitions
    by_partition: dict[int, list[int]] = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append(r.offset)
    for partition, offsets in by_partition.items():
        assert offsets == list(range(ends[partition] - 50, ends[partition]))
    recent = read_window(kafka.connection(), kafka.input_topic, None, since, 60)
    assert sorted(json.loads(r.value)["id"] for r in recent) == sorted(
        f"late{p}-{i}" for p in range(3) for i in range(30)
    )


def train_parser_args(extra):
    """``anomaly-train retrain``'s parsed arguments (the parser alone, nothing run)."""
    from training.cli import build_parser

    return build_parser().parse_args(["retrain", "--registry", "unused", *extra])
