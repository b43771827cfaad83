"""Replay a labelled dataset through a real worker, and check it against offline scoring.

    anomaly-replay telemetry:omi                      # the 12 application servers, one stream
    anomaly-replay telemetry:machine --protocol short
    anomaly-replay rows.csv --fit-share 0.2           # your rows: entity, ts, label columns
        [--model DIR] [--per-entity] [--threshold-mode entity_recent|model] [--speed 600]
        [--client kafka-python|confluent] [--bootstrap-servers HOST:PORT] [--limit ROWS]

Fits a bundle with ``anomaly-train fit``'s defaults (or takes ``--model``), starts the embedded
broker (or uses ``--bootstrap-servers``) and a real ``anomaly-worker`` with
``ANOMALY_SCORES_TOPIC``, streams every entity's rows into the input topic in time order
(keyed by entity; ``--speed``: times real time, 0 = as fast as it goes), reads every score
back and prints, per entity, the figures ``bench/telemetry.py`` prints: VUS-PR, AUC-PR,
AUC-ROC, the false-alarm rate and the event recall at the worker's decisions, beside the same
figures from scoring the same rows offline (``anomaly-train score``'s code). Exit 0 when every
record came back and no figure differs by more than ``--tolerance`` (0.01); 1 otherwise;
2 on a bad dataset or option.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from demo.broker import LocalBroker, free_port, stop_process
from demo.cli import wait_ready
from demo.replay_data import ReplayError, ReplaySet, load_file, load_telemetry
from demo.replay_report import Decisions, report
from training.config import FitConfig
from training.data import Table
from training.evaluate import judge, score_table
from training.exceptions import TrainingError
from training.fit import fit_bundle
from worker.contract.recent_threshold import DEFAULT_WARMUP_RECORDS, DEFAULT_WINDOW_RECORDS
from worker.core.scores import expand_scores
from worker.exceptions import WorkerError

__all__ = ["main"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="anomaly-replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dataset",
        help="telemetry:omi, telemetry:machine, telemetry:NAME,... "
        "or a file (.npz, .csv, .parquet, .jsonl)",
    )
    parser.add_argument(
        "--protocol",
        default="per-entity",
        choices=("per-entity", "short"),
        help="telemetry: fit on the train rows, or on the first fifth of test",
    )
    parser.add_argument("--data-dir", type=Path, help="where the telemetry set is")
    parser.add_argument(
        "--fit-share",
        type=float,
        default=0.2,
        help="a file: each entity's first share of rows fits the model",
    )
    parser.add_argument("--model", type=Path, help="a bundle or registry instead of fitting one")
    parser.add_argument("--epochs", type=int, default=FitConfig.epochs)
    parser.add_argument(
        "--per-entity",
        action="store_true",
        help="fit with anomaly-train fit --per-entity: each entity scored by its own baseline",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threshold-mode",
        default="entity_recent",
        choices=("model", "entity_recent"),
        help="ANOMALY_THRESHOLD_MODE",
    )
    parser.add_argument("--recent-window", type=int, default=DEFAULT_WINDOW_RECORDS)
    parser.add_argument("--recent-warmup", type=int, default=DEFAULT_WARMUP_RECORDS)
    parser.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="times real time (600: a minute of rows each 0.1 s); 0 = flat out",
    )
    parser.add_argument("--limit", type=int, help="only each entity's first ROWS rows")
    parser.add_argument("--client", default="kafka-python", choices=("kafka-python", "confluent"))
    parser.add_argument("--bootstrap-servers", help="a Kafka cluster instead of the embedded one")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument(
        "--scores-format",
        default="record",
        choices=("record", "batch"),
        help="the worker's ANOMALY_SCORES_FORMAT (default: record)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the scores after the last record is sent",
    )
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--output", type=Path, help="write every figure here (JSON)")
    parser.add_argument("--workdir", type=Path, help="keep the bundle and worker log here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.dataset.startswith("telemetry:"):
            spec = args.dataset.removeprefix("telemetry:")
            kwargs = {"data_dir": args.data_dir} if args.data_dir else {}
            dataset = load_telemetry(spec, args.protocol, **kwargs)
        else:
            dataset = load_file(Path(args.dataset), args.fit_share)
        if args.limit is not None and args.limit < 1:
            raise ReplayError(f"--limit must be positive, got {args.limit}")
        if args.speed < 0:
            raise ReplayError(f"--speed must be 0 or more, got {args.speed}")
        dataset = dataset.limit(args.limit)
    except (ReplayError, TrainingError) as exc:
        print(f"anomaly-replay: {exc}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        model = args.model or fit(dataset, workdir / "model", args)
        try:
            offline = score_offline(model, dataset, args)
        except WorkerError as exc:  # not a bundle, a checksum mismatch, an empty registry
            print(f"anomaly-replay: {exc}", file=sys.stderr)
            return 2
        online, seconds = through_worker(dataset, model, workdir, args, stack)
    text, worst, missing = report(dataset, online, offline, args.output)
    print(text)
    rows = sum(len(e.X) for e in dataset.entities)
    print(
        f"\n{rows:,} records through a real worker ({args.client}, "
        f"ANOMALY_THRESHOLD_MODE={args.threshold_mode}) in {seconds:.1f} s; "
        f"{missing} without a score; largest gap to offline {worst:.4f} "
        f"(tolerance {args.tolerance})"
    )
    return 0 if missing == 0 and worst <= args.tolerance else 1


def fit(dataset: ReplaySet, output: Path, args: argparse.Namespace) -> Path:
    print(f"fitting a model on {len(dataset.fit_rows):,} rows ...", flush=True)
    config = FitConfig(seed=args.seed, epochs=args.epochs, per_entity=args.per_entity)
    table = Table(dataset.fit_rows, dataset.feature_names, entities=list(dataset.fit_entities))
    fit_bundle(table, output, config)
    return output


def stream_order(dataset: ReplaySet) -> tuple[np.ndarray, np.ndarray]:
    """(entity index, row index) of every row, in time order across entities."""
    entity = np.concatenate([np.full(len(e.X), k) for k, e in enumerate(dataset.entities)])
    row = np.concatenate([np.arange(len(e.X)) for e in dataset.entities])
    ts = np.concatenate([e.ts for e in dataset.entities])
    order = np.lexsort((entity, ts))
    return entity[order], row[order]


def score_offline(model: Path, dataset: ReplaySet, args: argparse.Namespace) -> list[Decisions]:
    """What ``anomaly-train score`` decides for the rows in time order, per entity."""
    entity, row = stream_order(dataset)
    X = np.stack([dataset.entities[k].X[r] for k, r in zip(entity, row, strict=True)])
    names = [dataset.entities[k].name for k in entity.tolist()]
    scored, scorer = score_table(model, Table(X, dataset.feature_names, entities=list(names)))
    scores = scored.astype(np.float64)
    meta = scorer.metadata
    judged = judge(
        meta.threshold,
        meta.calibration.expected_alert_rate,
        scores,
        names,
        args.threshold_mode,
        args.recent_window,
        args.recent_warmup,
    )
    out = []
    for k, e in enumerate(dataset.entities):
        mine = entity == k
        decisions = Decisions.empty(len(e.X))
        decisions.received[:] = True
        decisions.scores[row[mine]] = scores[mine]
        decisions.alerts[row[mine]] = judged.alert[mine]
        out.append(decisions)
    return out


def through_worker(
    dataset: ReplaySet,
    model: Path,
    workdir: Path,
    args: argparse.Namespace,
    stack: ExitStack,
) -> tuple[list[Decisions], float]:
    bootstrap = args.bootstrap_servers
    if bootstrap is None:
        print("starting the embedded broker ...", flush=True)
        broker = stack.enter_context(LocalBroker(log_path=workdir / "broker.log"))
        bootstrap = broker.bootstrap_servers
    run = uuid.uuid4().hex[:8]
    topics = {name: f"replay-{run}-{name}" for name in ("input", "alerts", "dlq", "scores")}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(t, args.partitions, 1) for t in topics.values()])
    finally:
        admin.close()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_")},
        "ANOMALY_BOOTSTRAP_SERVERS": bootstrap,
        "ANOMALY_KAFKA_CLIENT": args.client,
        "ANOMALY_INPUT_TOPIC": topics["input"],
        "ANOMALY_ALERT_TOPIC": topics["alerts"],
        "ANOMALY_DLQ_TOPIC": topics["dlq"],
        "ANOMALY_SCORES_TOPIC": topics["scores"],
        "ANOMALY_SCORES_FORMAT": args.scores_format,
        "ANOMALY_GROUP_ID": f"replay-{run}",
        "ANOMALY_MODEL_PATH": str(model),
        "ANOMALY_THRESHOLD_MODE": args.threshold_mode,
        "ANOMALY_RECENT_WINDOW_RECORDS": str(args.recent_window),
        "ANOMALY_RECENT_WARMUP_RECORDS": str(args.recent_warmup),
        "ANOMALY_METRICS_HOST": "127.0.0.1",
        "ANOMALY_METRICS_PORT": str(port),
        "ANOMALY_SESSION_TIMEOUT_SECONDS": "6",
        "ANOMALY_HEARTBEAT_INTERVAL_SECONDS": "1",
        "ANOMALY_DEVICE": "cpu",
    }
    log_path = workdir / "worker.log"
    log = stack.enter_context(log_path.open("ab"))
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    stack.callback(stop_process, worker)
    if not wait_ready(port, worker, 60):
        raise SystemExit(worker_failed("the worker did not become ready", log_path))
    print(f"streaming into {topics['input']} ...", flush=True)
    started = time.monotonic()
    ids = send(bootstrap, topics["input"], dataset, args.speed)
    online = read_scores(bootstrap, topics["scores"], ids, dataset, args.timeout, worker)
    if worker.poll() is not None:
        raise SystemExit(
            worker_failed(f"the worker exited ({worker.returncode}) before every score", log_path)
        )
    return online, time.monotonic() - started


def worker_failed(what: str, log_path: Path) -> str:
    tail = log_path.read_text(errors="replace")[-2000:] if log_path.is_file() else ""
    return f"anomaly-replay: {what}; its log ends:\n{tail}"


def send(bootstrap: str, topic: str, dataset: ReplaySet, speed: float) -> int:
    """Every row as a record, in time order, paced at ``speed`` times real time."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, acks="all", batch_size=256 * 1024
    )
    entity, row = stream_order(dataset)
    first = dataset.entities[int(entity[0])].ts[int(row[0])] if len(entity) else 0.0
    started = time.monotonic()
    for k, r in zip(entity.tolist(), row.tolist(), strict=True):
        e = dataset.entities[k]
        ts = float(e.ts[r])
        if speed > 0:
            wait = started + (ts - first) / speed - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        body = {"id": f"{e.name}/{r}", "entity": e.name, "ts": ts, "features": e.X[r].tolist()}
        producer.send(topic, key=e.name.encode(), value=json.dumps(body).encode())
    producer.flush()
    producer.close()
    return len(entity)


def read_scores(
    bootstrap: str,
    topic: str,
    expected: int,
    dataset: ReplaySet,
    timeout_seconds: float,
    worker: subprocess.Popen[bytes],
) -> list[Decisions]:
    """Every score record of the run by id, until all came or ``timeout_seconds`` pass."""
    index = {e.name: k for k, e in enumerate(dataset.entities)}
    out = [Decisions.empty(len(e.X)) for e in dataset.entities]
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        seen: set[str] = set()
        deadline = time.monotonic() + timeout_seconds
        while len(seen) < expected and time.monotonic() < deadline and worker.poll() is None:
            for batch in consumer.poll(timeout_ms=500).values():
                for body in (s for record in batch for s in expand_scores(record.value)):
                    rid = str(body["id"])
                    name, _, position = rid.rpartition("/")
                    k, r = index[name], int(position)
                    out[k].scores[r] = np.nan if body["score"] is None else body["score"]
                    out[k].alerts[r] = body["alert"]
                    out[k].received[r] = True
                    seen.add(rid)
    finally:
        consumer.close()
    return out


if __name__ == "__main__":
    sys.exit(main())
