"""A real Prometheus server scrapes a running worker under traffic and evaluates our rules."""

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from demo.broker import free_port, stop_process, wait_for_port
from tests.helpers import record
from tests.integration.kafka_helpers import produce, wait_for

pytestmark = pytest.mark.integration

P99 = "histogram_quantile(0.99, sum by (le) (rate(anomaly_end_to_end_latency_seconds_bucket[15s])))"
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


@pytest.fixture
def prometheus_binary():
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed (scripts/system-deps.sh installs it)")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    return binary


def query(port, expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 503:  # the server listens before its storage is ready
            return []
        raise
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_rates_and_latency_quantiles(
    prometheus_binary, kafka_bootstrap, topics, start_worker, tmp_path
):
    worker = start_worker()
    worker.wait_ready()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{RULES}']\n"
        "scrape_configs:\n"
        "  - job_name: anomaly-worker\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{worker.port}']}}]\n"
    )
    server = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    stop = threading.Event()

    def traffic():
        i = 0
        while not stop.is_set() and i < 200:
            values = [
                record([5, 5, 5, 5] if j % 10 == 0 else [0, 0, 0, 0], ts=time.time())
                for j in range(100)
            ]
            produce(kafka_bootstrap, topics.input, values)
            i += 1
            stop.wait(0.2)

    producer = threading.Thread(target=traffic)
    producer.start()
    try:
        assert wait_for_port(port, 30), (tmp_path / "prometheus.log").read_text()
        rate = wait_for(
            lambda: [
                float(r["value"][1])
                for r in query(
                    port, 'rate(anomaly_records_consumed_total{job="anomaly-worker"}[15s])'
                )
                if float(r["value"][1]) > 0
            ],
            60,
            interval=1.0,
            message="a positive consumption rate",
        )
        assert rate[0] > 0
        p99 = wait_for(
            lambda: [
                float(r["value"][1])
                for r in query(
                    port,
                    P99,
                )
                if r["value"][1] not in ("NaN", "+Inf")
            ],
            60,
            interval=1.0,
            message="a computable p99 latency",
        )
        assert 0 < p99[0] < 60
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as response:
            groups = json.loads(response.read())["data"]["groups"]
        loaded = {rule["name"] for g in groups for rule in g["rules"]}
        written = {
            rule["alert"]
            for g in yaml.safe_load(RULES.read_text())["groups"]
            for rule in g["rules"]
        }
        assert loaded == written
        assert all(r["health"] == "ok" for g in groups for r in g["rules"])
        assert query(port, 'up{job="anomaly-worker"}')[0]["value"][1] == "1"
    finally:
        stop.set()
        producer.join(timeout=30)
        stop_process(server, 10)
