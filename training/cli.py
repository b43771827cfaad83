"""``anomaly-train``: fit, score, evaluate, manage the model registry, retrain on a schedule.

Kafka connection settings default to the worker's ``ANOMALY_*`` variables (bootstrap
servers, topics, SASL/SSL), so a trainer and a worker can share one configuration.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import signal
import sys
import threading
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from training.data import Table, load_table
from training.drift_check import Drift, drift_from_metrics, drift_of_window
from training.evaluate import evaluate, plot_curves, score_table
from training.exceptions import TrainingError
from training.fit import FitConfig, fit_bundle
from training.kafka_window import alerted_ids, infer_feature_names, normal_traffic, read_window
from training.promotion import GateConfig, promote, prune, register, retain, rollback
from training.report import write_report
from worker.exceptions import BundleError
from worker.logs import configure_logging
from worker.registry import Registry, resolve_bundle
from worker.scoring import Scorer
from worker.settings import WorkerSettings, describe_validation_error
from worker.transport_kafka_python import client_config

logger = logging.getLogger("training")

KAFKA_TRAINING_TRIM = 0.01  # robust pass default for traffic read from Kafka
ENCODE_BATCH = 10_000  # rows per model call when encoding a file


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level.upper())
    try:
        return int(args.handler(args))
    except ValidationError as exc:
        print(f"anomaly-train: {describe_validation_error(exc)}", file=sys.stderr)
    except (TrainingError, BundleError, OSError) as exc:
        print(f"anomaly-train: {exc}", file=sys.stderr)
    return 2


# --- commands ----------------------------------------------------------------------------
def cmd_fit(args: argparse.Namespace) -> int:
    config = _fit_config(args, kafka=args.from_kafka)
    config.validate()
    gate_config = _gate_config(args)
    exclusions: dict[str, int] = {}
    if args.from_kafka:
        registry = (
            Registry(args.registry)
            if args.registry and Registry.is_registry(args.registry)
            else None
        )
        traffic, _ = _kafka_traffic(args, registry)
        table, exclusions = traffic.table, traffic.excluded
    elif args.input is not None:
        table = load_table(args.input)
    else:
        raise TrainingError("give --input FILE or --from-kafka")
    if args.registry is not None:
        registry = Registry.create(args.registry)
        version = register(registry, table, config, exclusions)
        print(version)
        if args.promote:
            sample = load_table(args.sample).X if args.sample else None
            result = promote(registry, version, sample, gate_config, force=args.force)
            _print_gate(version, result)
            return 0 if result.accepted else 3
        return 0
    if args.output is None:
        raise TrainingError("give --output DIR (a bundle) or --registry DIR")
    metadata = fit_bundle(
        table,
        args.output,
        config,
        exclusions,
        after_write=lambda d, m, r: write_report(d, m, r.report),
    )
    logger.info(
        "wrote model %s to %s: %d features, threshold %.6g (%s)",
        metadata.version,
        args.output,
        metadata.n_features,
        metadata.threshold,
        metadata.calibration.method,
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    table = load_table(args.input)
    scores, scorer = score_table(args.model, table, args.device)
    with args.output.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "score", "alert"])
        threshold = scorer.metadata.threshold
        for i, s in enumerate(scores):
            writer.writerow([i, f"{float(s):.9g}", int(s > threshold)])
    logger.info(
        "scored %d rows with model %s into %s", len(scores), scorer.metadata.version, args.output
    )
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    table = load_table(args.input)
    scorer = Scorer.load(resolve_bundle(args.model)[0], args.device)
    X = table.columns_for(scorer.metadata.feature_names)
    latent = np.concatenate(
        [scorer.encode(X[i : i + ENCODE_BATCH]) for i in range(0, len(X), ENCODE_BATCH)]
    )
    version = np.array(scorer.metadata.version)
    if table.y is None:
        np.savez_compressed(args.output, Z=latent, model_version=version)
    else:
        np.savez_compressed(args.output, Z=latent, model_version=version, y=table.y)
    logger.info(
        "encoded %d rows into %d latent features with model %s: %s",
        len(latent),
        latent.shape[1],
        scorer.metadata.version,
        args.output,
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    table = load_table(args.input)
    if table.y is None:
        raise TrainingError(f"{args.input} has no labels (y / label / is_anomaly)")
    scores, scorer = score_table(args.model, table, args.device)
    result = evaluate(table.y, scores, scorer.metadata.threshold)
    print(json.dumps({"model": scorer.metadata.version, **asdict(result)}, indent=2))
    if args.plot:
        plot_curves(args.plot, table.y, scores, result)
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    current = registry.current()
    print(f"{'':2}{'version':<32} {'state':<12} {'threshold':>10}  notes")
    for version in registry.versions():
        status = registry.status(version)
        try:
            meta = json.loads((registry.path_of(version) / "bundle.json").read_text())
            threshold = f"{meta['threshold']:.4g}"
        except (OSError, ValueError, KeyError):
            threshold = "?"
        notes = "; ".join(status.get("reasons", []) or status.get("notes", []))
        print(
            f"{'*' if version == current else '':2}{version:<32} {status['state']:<12} "
            f"{threshold:>10}  {notes}"
        )
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    sample: np.ndarray | None = None
    if args.sample:
        sample = load_table(args.sample).X
    elif args.sample_from_kafka:
        traffic, _ = _kafka_traffic(args, registry)
        sample = traffic.table.X
    result = promote(registry, args.version, sample, _gate_config(args), force=args.force)
    _print_gate(args.version, result)
    return 0 if result.accepted else 3


def cmd_models_rollback(args: argparse.Namespace) -> int:
    print(rollback(Registry(args.registry)))
    return 0


def cmd_models_prune(args: argparse.Namespace) -> int:
    for version in prune(Registry(args.registry), args.keep):
        print(f"removed {version}")
    return 0


#: ``retrain`` exit code when the gate rejects the candidate (the CronJob does not retry it).
EXIT_REJECTED = 3


def cmd_retrain(args: argparse.Namespace) -> int:
    return 0 if retrain_once(args) else EXIT_REJECTED


def cmd_schedule(args: argparse.Namespace) -> int:
    period = parse_duration(args.every)
    _fit_config(args, kafka=True).validate()  # a bad flag fails now, not every period
    _gate_config(args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    logger.info("retraining every %s into %s", args.every, args.registry)
    while not stop.is_set():
        try:
            retrain_once(args)
        except (TrainingError, BundleError, OSError) as exc:
            logger.error("retraining failed, will try again next period: %s", exc)
        stop.wait(period)
    return 0


def retrain_once(args: argparse.Namespace) -> bool:
    """Read a window, keep normal rows, register a candidate, gate it on the newest 20%.

    With ``--if-drift``, only when the drift of recent traffic from the current model's
    training traffic passes ``--drift-threshold`` (True, nothing done, when it does not).
    """
    config, gate_config = _fit_config(args, kafka=True), _gate_config(args)
    config.validate()
    registry = Registry.create(args.registry)
    traffic, current = _kafka_traffic(args, registry)
    trigger: dict[str, Any] | None = None
    if args.if_drift:
        drift = _measure_drift(args, traffic, current)
        if drift is None:
            trigger = {"drift": None, "reason": "no current model with a drift reference"}
            logger.info("no current model with a drift reference to compare with: retraining")
        elif not drift.exceeds(args.drift_threshold):
            logger.info(
                "no drift above %.2f (%s): not retraining", args.drift_threshold, drift.describe()
            )
            print(f"not retrained: {drift.describe()}, threshold {args.drift_threshold}")
            return True
        else:
            trigger = {"drift": drift.to_dict(), "threshold": args.drift_threshold}
            logger.info("drift above %.2f (%s): retraining", args.drift_threshold, drift.describe())
    X, order = traffic.table.X, np.argsort(traffic.timestamps, kind="stable")
    cut = int(len(order) * 0.8)
    train_rows, sample_rows = np.sort(order[:cut]), np.sort(order[cut:])
    table = Table(X[train_rows], traffic.table.feature_names)
    version = register(registry, table, config, traffic.excluded, trigger)
    result = promote(registry, version, X[sample_rows], gate_config)
    _print_gate(version, result)
    removed = retain(registry, args.keep)
    if removed:
        logger.info("retention: removed %s", ", ".join(removed))
    return result.accepted


# --- helpers -----------------------------------------------------------------------------------
def _measure_drift(args: argparse.Namespace, traffic: Any, current: Scorer | None) -> Drift | None:
    """From the workers' /metrics (``--drift-from``), else on the window read."""
    if args.drift_from:
        return drift_from_metrics(args.drift_from)
    if current is None or current.metadata.drift_reference is None:
        return None
    return drift_of_window(
        current.metadata.drift_reference,
        current.metadata.feature_names,
        traffic.window,
        traffic.window_scores,
    )


def _kafka_traffic(
    args: argparse.Namespace, registry: Registry | None
) -> tuple[Any, Scorer | None]:
    overrides = {
        k: v
        for k, v in {
            "bootstrap_servers": args.bootstrap_servers,
            "input_topic": args.topic,
            "alert_topic": args.alert_topic,
        }.items()
        if v
    }
    settings = WorkerSettings(**overrides)
    client = client_config(settings)
    current = None
    if registry is not None and registry.current() is not None:
        current = Scorer.load(registry.path_of(registry.current() or ""), "cpu")
    since = parse_time(args.since) if args.since else None
    timeout = args.read_timeout
    records = read_window(client, settings.input_topic, args.last, since, timeout)
    if not records:
        raise TrainingError(f"the window of {settings.input_topic!r} is empty")
    alerts = []
    if not args.no_alert_topic:
        first_ts = min(r.timestamp for r in records) / 1000.0
        alerts = read_window(client, settings.alert_topic, args.alert_scan_last, first_ts, timeout)
    names = current.metadata.feature_names if current else infer_feature_names(records)
    return normal_traffic(records, names, alerted_ids(alerts), current), current


def _fit_config(args: argparse.Namespace, kafka: bool) -> FitConfig:
    trim = (
        args.trim_fraction
        if args.trim_fraction is not None
        else (KAFKA_TRAINING_TRIM if kafka else 0.0)
    )
    return FitConfig(
        target_alert_rate=args.target_alert_rate,
        threshold_method=args.threshold_method,
        mad_k=args.mad_k,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        hidden=tuple(int(w) for w in args.hidden.split(",")) if args.hidden else None,
        latent=args.latent,
        activation=args.activation,
        dropout=args.dropout,
        loss=args.loss,
        noise=args.noise,
        trim_fraction=trim,
        ensemble=args.ensemble,
        scaling=args.scaling,
        score=args.score,
        memory_rows=args.memory_rows,
        memory_subsets=args.memory_subsets,
        sample_rows=args.sample_rows,
        memory_trim=args.memory_trim,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )


def _gate_config(args: argparse.Namespace) -> GateConfig:
    return GateConfig(
        max_rate_factor=args.max_rate_factor,
        rate_significance=args.rate_significance,
        max_error_increase=args.max_error_increase,
    )


def _print_gate(version: str, result: Any) -> None:
    verdict = "promoted" if result.accepted else "rejected"
    print(f"{version}: {verdict}" + (f" ({'; '.join(result.reasons)})" if result.reasons else ""))


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``6h``, ``1d`` -> seconds.

    >>> parse_duration("6h")
    21600.0
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not match:
        raise TrainingError(f"not a duration: {text!r} (use e.g. 90s, 30m, 6h, 1d)")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def parse_time(text: str) -> float:
    """Epoch seconds or ISO-8601 -> epoch seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise TrainingError(f"not a time: {text!r} (epoch seconds or ISO-8601)") from exc
    if parsed.tzinfo is None:
        from datetime import UTC

        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomaly-train", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("model and training")
        g.add_argument(
            "--target-alert-rate",
            type=float,
            default=0.01,
            help="quantile rule: share of held-out normal rows that alert (0.01)",
        )
        g.add_argument("--threshold-method", choices=["quantile", "mad"], default="quantile")
        g.add_argument("--mad-k", type=float, default=5.0, help="mad rule: median + k * MAD (5)")
        g.add_argument(
            "--hidden", help="encoder widths, e.g. 128,64,32 (default: one layer ~2 x D)"
        )
        g.add_argument("--latent", type=int, help="latent size (default D / 2)")
        g.add_argument(
            "--activation", default="relu", choices=["relu", "leaky_relu", "elu", "gelu", "tanh"]
        )
        g.add_argument("--dropout", type=float, default=0.0)
        g.add_argument("--weight-decay", type=float, default=0.0)
        g.add_argument(
            "--loss", choices=["mse", "bce"], default="mse", help="bce: features in [0, 1]"
        )
        g.add_argument(
            "--noise", type=float, default=0.0, help="denoising input noise (scaled units)"
        )
        g.add_argument(
            "--trim-fraction",
            type=float,
            default=None,
            help="robust pass: drop the worst-reconstructed share and refit "
            "(default 0, or 0.01 for Kafka traffic)",
        )
        g.add_argument(
            "--ensemble",
            type=int,
            default=1,
            help="autoencoders averaged, each with its own seed (1)",
        )
        g.add_argument(
            "--scaling",
            choices=["robust", "minmax"],
            default="robust",
            help="input scaling frozen into the bundle (robust: median and IQR)",
        )
        g.add_argument(
            "--score",
            choices=["combined", "reconstruction"],
            default="combined",
            help="combined: reconstruction error + distance to remembered normal rows + "
            "feature tails (default); reconstruction: the autoencoder's error alone",
        )
        g.add_argument(
            "--memory-rows",
            type=int,
            default=1024,
            help="combined score: normal training rows remembered for the neighbour distance "
            "(1024; 512: ~0.5 us less per record on CPU, a little less accurate on clean "
            "training data)",
        )
        g.add_argument(
            "--memory-subsets",
            type=int,
            default=4,
            help="combined score: random subsets of the memory; the neighbour term is half "
            "the nearest row's distance, half the subsets' average (4; 1: plain nearest row)",
        )
        g.add_argument(
            "--sample-rows",
            type=int,
            default=4096,
            help="combined score: training rows sampled for the tails and the memory (4096)",
        )
        g.add_argument(
            "--memory-trim",
            type=float,
            default=0.05,
            help="combined score: share of sampled rows with the most extreme values left out "
            "of the memory (0.05)",
        )
        g.add_argument("--epochs", type=int, default=200)
        g.add_argument("--patience", type=int, default=15, help="early stopping patience (epochs)")
        g.add_argument("--batch-size", type=int, default=256)
        g.add_argument("--learning-rate", type=float, default=1e-3)
        g.add_argument("--seed", type=int, default=0, help="same seed and data: same model")
        g.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
        g.add_argument("--no-progress", action="store_true", help="no progress bar")

    def kafka_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("Kafka window (defaults: the worker's ANOMALY_* settings)")
        g.add_argument("--bootstrap-servers")
        g.add_argument("--topic", help="input topic (ANOMALY_INPUT_TOPIC)")
        g.add_argument(
            "--alert-topic", help="alert topic whose ids are excluded (ANOMALY_ALERT_TOPIC)"
        )
        g.add_argument("--no-alert-topic", action="store_true", help="do not read the alert topic")
        g.add_argument(
            "--last",
            type=int,
            default=50_000,
            help="last N records per partition; bounds memory, also with --since (50000)",
        )
        g.add_argument("--since", help="of those, the records since this time (epoch s or ISO)")
        g.add_argument(
            "--alert-scan-last",
            type=int,
            default=200_000,
            help="read at most the last N alerts per partition to exclude their ids (200000)",
        )
        g.add_argument(
            "--read-timeout",
            type=float,
            default=120.0,
            help="give up reading a topic's window after this many seconds (120)",
        )

    def gate_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("promotion gate")
        g.add_argument(
            "--max-rate-factor",
            type=float,
            default=3.0,
            help="sample alert rate within calibrated rate x/÷ this (3)...",
        )
        g.add_argument(
            "--rate-significance",
            type=float,
            default=0.001,
            help="...unless a rate that far off has at least this chance (0.001)",
        )
        g.add_argument(
            "--max-error-increase",
            type=float,
            default=0.25,
            help="allowed rise of median sample error over the current model (0.25)",
        )

    fit = sub.add_parser("fit", help="train an autoencoder; write a bundle or register a candidate")
    fit.add_argument(
        "--input", type=Path, help=".npz (X[, y]), .csv (header), .parquet or .jsonl records"
    )
    fit.add_argument(
        "--from-kafka", action="store_true", help="train on a window of the input topic"
    )
    fit.add_argument("--output", type=Path, help="bundle directory to write")
    fit.add_argument("--registry", type=Path, help="register a candidate version here instead")
    fit.add_argument(
        "--promote", action="store_true", help="with --registry: promote through the gate"
    )
    fit.add_argument("--sample", type=Path, help="recent normal traffic for the gate (a file)")
    fit.add_argument("--force", action="store_true", help="promote without the gate")
    model_options(fit)
    kafka_options(fit)
    gate_options(fit)
    fit.set_defaults(handler=cmd_fit)

    score = sub.add_parser(
        "score", help="one score per input row, in order (the worker's code path)"
    )
    score.add_argument("--model", type=Path, required=True, help="a bundle or a registry")
    score.add_argument("--input", type=Path, required=True)
    score.add_argument("--output", type=Path, required=True, help="CSV: row, score, alert")
    score.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    score.set_defaults(handler=cmd_score)

    enc = sub.add_parser(
        "encode", help="the autoencoder's latent features of each input row (a feature extractor)"
    )
    enc.add_argument("--model", type=Path, required=True, help="a bundle or a registry")
    enc.add_argument("--input", type=Path, required=True)
    enc.add_argument(
        "--output", type=Path, required=True, help=".npz: Z [rows, latent] (and y if labelled)"
    )
    enc.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    enc.set_defaults(handler=cmd_encode)

    ev = sub.add_parser("evaluate", help="ROC-AUC, PR-AUC, precision/recall/F1 on labelled rows")
    ev.add_argument("--model", type=Path, required=True)
    ev.add_argument(
        "--input", type=Path, required=True, help="labelled: .npz with y, or .csv with label"
    )
    ev.add_argument("--plot", type=Path, help="write ROC and precision-recall curves (PNG)")
    ev.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    ev.set_defaults(handler=cmd_evaluate)

    models = sub.add_parser("models", help="the registry: list, promote, rollback, prune")
    msub = models.add_subparsers(dest="models_command", required=True)
    for name, handler, helptext in (
        ("list", cmd_models_list, "versions, their state, the current one (*)"),
        ("rollback", cmd_models_rollback, "make the previous current version current again"),
    ):
        p = msub.add_parser(name, help=helptext)
        p.add_argument("--registry", type=Path, required=True)
        p.set_defaults(handler=handler)
    p = msub.add_parser("promote", help="make a version current if it passes the gate")
    p.add_argument("version")
    p.add_argument("--registry", type=Path, required=True)
    p.add_argument("--sample", type=Path, help="recent normal traffic for the gate (a file)")
    p.add_argument("--sample-from-kafka", action="store_true", help="gate on a window of traffic")
    p.add_argument("--force", action="store_true", help="skip the gate (the model must still load)")
    kafka_options(p)
    gate_options(p)
    p.set_defaults(handler=cmd_models_promote)
    p = msub.add_parser("prune", help="remove old versions (never the current or rollback target)")
    p.add_argument("--registry", type=Path, required=True)
    p.add_argument("--keep", type=int, required=True)
    p.set_defaults(handler=cmd_models_prune)

    for name, handler, helptext in (
        ("retrain", cmd_retrain, "one cycle: fit on Kafka traffic, gate, promote (for a CronJob)"),
        ("schedule", cmd_schedule, "retrain in a loop (for compose-style deployments)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--registry", type=Path, required=True)
        if name == "schedule":
            p.add_argument("--every", required=True, help="period, e.g. 6h, 30m")
        p.add_argument(
            "--keep",
            type=int,
            default=10,
            help="after each cycle keep the newest K versions (plus current and its rollback "
            "target) and only the newest rejected candidate (10)",
        )
        g = p.add_argument_group("retrain only on drift")
        g.add_argument(
            "--if-drift",
            action="store_true",
            help="retrain only when recent traffic drifted from the current model's training "
            "traffic (population stability index of a feature or of the score)",
        )
        g.add_argument(
            "--drift-threshold",
            type=float,
            default=0.25,
            help="the drift that triggers retraining (0.25: 'significant' in PSI's bands)",
        )
        g.add_argument(
            "--drift-from",
            action="append",
            metavar="URL",
            help="read the drift from running workers' /metrics (repeat per worker) instead "
            "of measuring it on the Kafka window",
        )
        model_options(p)
        kafka_options(p)
        gate_options(p)
        p.set_defaults(handler=handler)
    return parser


if __name__ == "__main__":
    sys.exit(main())
