"""The README's first command: the demo runs end to end on the embedded broker."""

import os
import re
import subprocess
import sys

import pytest

from demo.broker import free_port

pytestmark = pytest.mark.integration


def test_demo_trains_streams_and_reports(kafka_bootstrap, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_")}
    args = [
        "--duration",
        "6",
        "--rate",
        "1500",
        "--workdir",
        str(tmp_path),
        "--metrics-port",
        str(free_port()),
    ]
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        args += ["--bootstrap-servers", kafka_bootstrap]
    result = subprocess.run(
        [sys.executable, "-m", "demo", *args], env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "worker serving model" in out and "=== summary ===" in out
    assert "registered and promoted" in out
    sent = int(re.search(r"records sent:\s+(\d+)", out).group(1))
    consumed = int(re.search(r"records consumed:\s+(\d+)", out).group(1))
    assert sent > 5000 and consumed == sent, out
    precision, recall = map(
        float, re.search(r"precision / recall:\s+([\d.]+) / ([\d.]+)", out).groups()
    )
    assert recall >= 0.9 and precision >= 0.5, out
    read_back, produced = map(int, re.search(r"alerts:\s+(\d+) read back of (\d+)", out).groups())
    assert read_back == produced > 0, out
    # The drift episode shows: the score's drift crosses the 0.25 band once it starts.
    found = re.search(r"score drift \(PSI\):\s+([\d.]+) at most before .*?, ([\d.]+) from", out)
    before, since = map(float, found.groups())
    assert before < 0.25 < since, out
    assert [p.name for p in tmp_path.glob("registry-*/CURRENT")] == ["CURRENT"]
