"""Where a worker's wall time and CPU go while it drains a backlog: py-spy samples, all threads.

    .venv/bin/pip install py-spy   # not a project dependency
    .venv/bin/python bench/profile_worker.py [--records 400000] [--clients kafka-python,confluent]
        [--rate 200] [--out DIR]

Fills one topic (8-feature JSON records, 1,000 entities, 4 partitions) on the embedded broker
(or ``--bootstrap-servers``), fits the default bundle, then for each client starts a real
``anomaly-worker run`` twice on that topic, each in a new consumer group, and attaches py-spy
between 10% and 90% of the drain (steady state):

- ``wall``: ``--idle``: every sample of every Python thread, waiting included;
- ``cpu``: only samples where a thread is running.

Each sample is put in the stage of the loop its stack is in (the outermost stage frame wins:
``poll`` (waiting for or decoding fetches in the client), ``decode``, ``score``, ``decide``,
``alerts``, ``scores``, ``produce``, ``commit`` (including flushing the producer before it),
``metrics``, ``other``) and the shares are printed per thread, the main loop first; the raw
collapsed stacks (flame-graph input) are written to ``--out``. librdkafka's own threads are
native and not sampled: their CPU is the process's CPU minus what the Python threads used.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from kafka.admin import KafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import D, cpu_seconds, fill, ready, scrape  # noqa: E402
from demo.broker import LocalBroker, free_port, stop_process  # noqa: E402
from training.config import FitConfig  # noqa: E402
from training.data import Table  # noqa: E402
from training.fit import fit_bundle  # noqa: E402

#: (stage, substrings of a frame ``function (file:line)``): the outermost matching frame
#: decides. Order matters only within one frame.
STAGES = (
    ("commit", ("commit (worker/pipeline.py", "committer.py", "checkpoint.py", "transactions.py")),
    ("poll", ("_collect (worker/pipeline.py",)),
    ("decode", ("decode_batch",)),
    ("score", ("score (worker/model/served.py", "score (worker/contract/scoring.py")),
    ("waiting for the model call", ("futures/_base.py",)),
    ("decide", ("decide (worker/model/served.py",)),
    ("alerts", ("_alert (worker/processing.py",)),
    ("scores", ("build_score", "scores (worker/delivery/outputs.py")),
    ("produce", ("worker/delivery/outputs.py", "_producer.py")),
    ("metrics", ("prometheus_client", "observe_many")),
)
WAITING = ("wait (threading.py", "select (selectors.py", "poll (selectors.py", "sleep")


def stage_of(frames: list[str]) -> str:
    for frame in frames:
        for stage, marks in STAGES:
            if any(mark in frame for mark in marks):
                return stage
    return "other"


def thread_name(label: str) -> str:
    """py-spy's ``thread (tid): name`` without the id and the run's group id; threads with no
    name (the metrics server's request handlers) are one row."""
    _, _, name = label.partition(": ")
    return re.sub(r"-?prof-[0-9a-f]{6}-?", "-", name).strip("-") if name else "unnamed"


def summarise(path: Path) -> dict[str, Counter[str]]:
    """Samples per thread and stage (``... (waiting)`` when the leaf frame is a wait) from
    py-spy's raw output; the thread running the pipeline's loop is ``main``."""
    threads: dict[str, Counter[str]] = defaultdict(Counter)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        label, *frames = stack.split(";")
        where = (
            "main" if any("run (worker/pipeline.py" in f for f in frames) else thread_name(label)
        )
        stage = stage_of(frames)
        if where == "main" and stage == "other":  # name it by the loop's step it is under
            loop = next(i for i, f in enumerate(frames) if "run (worker/pipeline.py" in f)
            step = frames[loop + 1] if loop + 1 < len(frames) else frames[loop]
            stage = f"other: {step.split(' (')[0]}"
        if frames and any(mark in frames[-1] for mark in WAITING):
            stage += " (waiting)"
        threads[where][stage] += int(count)
    return threads


def attach(pid: int, out: Path, idle: bool, rate: int) -> subprocess.Popen[bytes]:
    spy = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if spy is None:
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    command = [spy, "record", "--pid", str(pid), "--rate", str(rate), "--threads"]
    command += ["--nonblocking", "--format", "raw", "-o", str(out), "--duration", "600"]
    command += ["--idle"] if idle else []
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def profile_drain(
    client: str,
    mode: str,
    args: argparse.Namespace,
    bootstrap: str,
    topic: str,
    model: Path,
    workdir: Path,
) -> tuple[Path, float, float]:
    suffix = uuid.uuid4().hex[:6]
    alerts, dlq = f"prof-alerts-{suffix}", f"prof-dlq-{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(t, 4, 1) for t in (alerts, dlq)])
    admin.close()
    port = free_port()
    env = {
        **os.environ,
        "ANOMALY_KAFKA_CLIENT": client,
        "ANOMALY_BOOTSTRAP_SERVERS": bootstrap,
        "ANOMALY_INPUT_TOPIC": topic,
        "ANOMALY_ALERT_TOPIC": alerts,
        "ANOMALY_DLQ_TOPIC": dlq,
        "ANOMALY_GROUP_ID": f"prof-{suffix}",
        "ANOMALY_MODEL_PATH": str(model),
        "ANOMALY_METRICS_PORT": str(port),
        "ANOMALY_METRICS_HOST": "127.0.0.1",
        "ANOMALY_SESSION_TIMEOUT_SECONDS": "6",
        "ANOMALY_DEVICE": "cpu",
        "ANOMALY_LOG_LEVEL": "WARNING",
    }
    log = (workdir / f"worker-{client}-{mode}.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    out = args.out / f"{client}-{mode}.txt"
    try:
        deadline = time.monotonic() + 60
        while not ready(port):
            assert worker.poll() is None and time.monotonic() < deadline, "worker not ready"
            time.sleep(0.1)
        spy = None
        deadline = time.monotonic() + 600
        while (consumed := scrape(port, "anomaly_records_consumed_total")) < 0.9 * args.records:
            assert time.monotonic() < deadline, f"consumed only {consumed}"
            if spy is None and consumed >= 0.1 * args.records:
                spy = attach(worker.pid, out, mode == "wall", args.rate)
                started, cpu = time.monotonic(), cpu_seconds(worker.pid)
            time.sleep(0.05)
        assert spy is not None, "the drain was too quick to sample: use more --records"
        seconds, cpu = time.monotonic() - started, cpu_seconds(worker.pid) - cpu
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
        if not out.is_file():
            raise SystemExit(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
    finally:
        stop_process(worker)
    return out, seconds, cpu


def report(client: str, mode: str, path: Path, seconds: float, cpu: float, rate: int) -> None:
    """Per thread: its samples as a share of the sampled time, and each stage's share of the
    thread's samples; the process's CPU over the same time."""
    threads = summarise(path)
    possible = seconds * rate
    print(
        f"\n### worker on {client}, {mode} samples ({seconds:.1f} s at {rate}/s; the process "
        f"used {cpu / seconds:.0%} of a core meanwhile)\n"
    )
    print("| thread | samples / sampled time | stage: share of the thread's samples |")
    print("| --- | ---: | --- |")
    for thread, counts in sorted(threads.items(), key=lambda t: (t[0] != "main", t[0])):
        n = sum(counts.values())
        if thread != "main" and n < 0.02 * possible:
            continue
        stages = ", ".join(
            f"{stage} {k / n:.0%}" for stage, k in counts.most_common() if k / n >= 0.01
        )
        print(f"| {thread} | {n / possible:.0%} | {stages} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--clients", default="kafka-python,confluent")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--bootstrap-servers", help="a Kafka cluster instead of the embedded one")
    parser.add_argument("--out", type=Path, default=Path("profiles"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        bootstrap = args.bootstrap_servers
        if bootstrap is None:
            bootstrap = stack.enter_context(LocalBroker()).bootstrap_servers
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        topic = f"prof-{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(topic, 4, 1)])
        admin.close()
        rng = np.random.default_rng(0)
        normal = Table(
            rng.normal(size=(20_000, D)).astype(np.float32), tuple(f"f{i}" for i in range(D))
        )
        fit_bundle(normal, workdir / "model", FitConfig(epochs=20, seed=0))
        fill(bootstrap, topic, args.records, rng, 0.01, 1_000)
        for client in [c for c in args.clients.split(",") if c]:
            for mode in ("wall", "cpu"):
                path, seconds, cpu = profile_drain(
                    client, mode, args, bootstrap, topic, workdir / "model", workdir
                )
                report(client, mode, path, seconds, cpu, args.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
