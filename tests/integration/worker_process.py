"""Run ``anomaly-worker run`` as a real process, configured only through ANOMALY_* variables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from demo.broker import free_port
from tests.integration.kafka_helpers import Topics, wait_for


class WorkerProcess:
    def __init__(
        self, bootstrap: str, topics: Topics, model: Path, log_path: Path, **env: str
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_")},
            "ANOMALY_BOOTSTRAP_SERVERS": bootstrap,
            "ANOMALY_INPUT_TOPIC": topics.input,
            "ANOMALY_ALERT_TOPIC": topics.alerts,
            "ANOMALY_DLQ_TOPIC": topics.dlq,
            "ANOMALY_GROUP_ID": topics.group,
            "ANOMALY_MODEL_PATH": str(model),
            "ANOMALY_METRICS_HOST": "127.0.0.1",
            "ANOMALY_METRICS_PORT": str(self.port),
            "ANOMALY_SESSION_TIMEOUT_SECONDS": "6",
            "ANOMALY_HEARTBEAT_INTERVAL_SECONDS": "1",
            "ANOMALY_COMMIT_INTERVAL_SECONDS": "0.5",
            "ANOMALY_DEVICE": "cpu",
            "ANOMALY_LOG_LEVEL": "INFO",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}{path}", timeout=2
            ) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self, timeout_seconds: float = 30.0) -> None:
        wait_for(
            lambda: self.http("/readyz")[0] == 200 or self.exited(),
            timeout_seconds,
            message="/readyz",
        )
        assert not self.exited(), f"worker exited early:\n{self.log()}"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        status, text = self.http("/metrics")
        if status != 200:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and (labels is None or sample.labels == labels):
                    return sample.value
        return None

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def terminate(self, timeout_seconds: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_seconds)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
