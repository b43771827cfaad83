"""Synthetic traffic for a real cluster, and a first model for an empty registry (compose).

python -m demo.produce --bootstrap-servers kafka:9092 --topic features --rate 500
python -m demo.produce --seed-registry /models      # train + promote if nothing is current
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from kafka import KafkaProducer

from demo.traffic import FEATURES, TrafficGenerator
from training.config import FitConfig
from training.data import Table
from training.promotion import GateConfig, promote, register
from training.publish import WritableRegistry
from worker.observe.logs import configure_logging

logger = logging.getLogger("demo.produce")


def seed_registry(root: Path) -> str | None:
    """Register and promote a model of the synthetic traffic unless the registry has one."""
    registry = WritableRegistry.create(root)
    if registry.current() is not None:
        logger.info("registry %s already serves %s", root, registry.current())
        return None
    rows = TrafficGenerator(seed=1).normal_rows(20_000)
    version = register(registry, Table(rows, FEATURES), FitConfig(seed=1, target_alert_rate=0.002))
    promote(registry, version, None, GateConfig(), force=True)
    logger.info("seeded registry %s with %s", root, version)
    return version


def stream(bootstrap: str, topic: str, rate: float, duration: float, stop: threading.Event) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    generator = TrafficGenerator(seed=int(time.time()))
    started, sent = time.monotonic(), 0
    while not stop.is_set() and (duration <= 0 or time.monotonic() - started < duration):
        due = int((time.monotonic() - started) * rate) - sent
        for event in generator.events(max(due, 0), time.time()):
            producer.send(topic, key=event.id.encode(), value=event.value)
        sent += max(due, 0)
        stop.wait(0.05)
    producer.flush()
    producer.close()
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.produce", description=__doc__)
    parser.add_argument("--bootstrap-servers", default="localhost:9092")
    parser.add_argument("--topic", default="features")
    parser.add_argument("--rate", type=float, default=500.0, help="records per second")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds; 0 runs until stopped")
    parser.add_argument("--seed-registry", type=Path, help="only seed this registry, then exit")
    args = parser.parse_args(argv)
    configure_logging("INFO")
    if args.seed_registry:
        seed_registry(args.seed_registry)
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sent = stream(args.bootstrap_servers, args.topic, args.rate, args.duration, stop)
    logger.info("sent %d records to %s", sent, args.topic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
