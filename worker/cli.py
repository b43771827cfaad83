"""``anomaly-worker``: the command line. Configuration comes only from ANOMALY_* / .env."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from pydantic import ValidationError

from worker.app import run_worker
from worker.contract.exceptions import BundleError
from worker.delivery.exceptions import UndecodableBatchError
from worker.kafka.ports import OutputTopicError, TlsError
from worker.observe.logs import configure_logging
from worker.settings import WorkerSettings, describe_validation_error, settings_table

logger = logging.getLogger("worker")

#: Exit codes: 0 stopped cleanly; 1 a runtime fault (uncommitted records are read again after a
#: restart); 2 bad settings, model or output topics (fix, then restart); 3 a record batch the
#: Kafka client cannot decode, with ANOMALY_ON_UNDECODABLE_BATCH=fail (the log names it).
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_UNDECODABLE = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="anomaly-worker",
        description="Score a Kafka topic with a TorchScript autoencoder (settings: ANOMALY_*).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="consume, score and alert until SIGTERM/SIGINT")
    sub.add_parser("check", help="validate settings and the model bundle, then exit")
    sub.add_parser("settings", help="print every setting (Markdown table) and exit")
    args = parser.parse_args(argv)
    if args.command == "settings":
        print(settings_table(), end="")
        return EXIT_OK

    try:
        settings = WorkerSettings()
    except ValidationError as exc:
        print(f"anomaly-worker: {describe_validation_error(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)

    if args.command == "check":
        from worker.contract.registry import resolve_bundle
        from worker.contract.scoring import Scorer

        try:
            scorer = Scorer.load(resolve_bundle(settings.model_path)[0], settings.device)
        except BundleError as exc:
            print(f"anomaly-worker: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"ok: model {scorer.metadata.version}, {scorer.metadata.n_features} features")
        return EXIT_OK

    stop = threading.Event()
    _install_signal_handlers(stop, settings.shutdown_timeout_seconds)
    try:
        run_worker(settings, stop)
    except (BundleError, OutputTopicError, TlsError) as exc:
        print(f"anomaly-worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except UndecodableBatchError:
        return EXIT_UNDECODABLE  # logged by run_worker, with the partition and offset
    except OSError as exc:  # e.g. the metrics port is taken
        if not getattr(exc, "logged", False):
            print(f"anomaly-worker: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        if not getattr(exc, "logged", False):
            logger.exception(
                "stopping on an unexpected error; uncommitted records will be read again"
            )
        return EXIT_FAILED
    return EXIT_OK


def _install_signal_handlers(stop: threading.Event, bound_seconds: float) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            return
        logger.info(
            "%s received: finishing the batch, flushing, committing", signal.Signals(signum).name
        )
        stop.set()
        watchdog = threading.Timer(bound_seconds + 5.0, _give_up, args=(bound_seconds,))
        watchdog.daemon = True
        watchdog.start()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _give_up(bound_seconds: float) -> None:
    logger.error(
        "shutdown did not finish within %.0fs; exiting without a final commit "
        "(uncommitted records will be read again)",
        bound_seconds,
    )
    logging.shutdown()
    os._exit(EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
