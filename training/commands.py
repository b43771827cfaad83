"""What each ``anomaly-train`` command does with its parsed arguments.

Each handler turns the arguments into the configuration values the use cases take
(:class:`~training.config.FitConfig`, :class:`~training.promotion.GateConfig`,
:class:`~training.kafka_window.WindowConfig`, :class:`~training.retrain.RetrainConfig`,
the Kafka slice of the workers' settings), calls them and prints the outcome.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import re
import signal
import threading
from dataclasses import asdict
from typing import Any

import numpy as np

from training.config import FitConfig
from training.data import Table, load_table
from training.detector_options import detector_settings
from training.evaluate import evaluate, judge, plot_curves, score_table
from training.exceptions import TrainingError
from training.fit import fit_bundle
from training.kafka_window import WindowConfig
from training.promotion import GateConfig, promote, prune, register, rollback
from training.publish import WritableRegistry
from training.report import write_report
from training.retrain import (
    KAFKA_TRIM_FRACTION,
    RetrainConfig,
    gate_line,
    kafka_traffic,
    retrain_once,
    schedule,
)
from worker.contract.recent_threshold import Judgement
from worker.contract.records import parse_timestamp
from worker.contract.registry import Registry, resolve_bundle
from worker.contract.scoring import Scorer
from worker.kafka.settings import KafkaSettings

__all__ = ["EXIT_REJECTED", "parse_duration", "parse_time"]

logger = logging.getLogger("training")

#: Exit code when the gate rejects the candidate (the CronJob does not retry it).
EXIT_REJECTED = 3
ENCODE_BATCH = 10_000  # rows per model call when encoding a file


def cmd_fit(args: argparse.Namespace) -> int:
    config = fit_config(args, kafka=args.from_kafka)
    config.validate()
    gate = gate_config(args)
    exclusions: dict[str, int] = {}
    if args.from_kafka:
        registry = (
            Registry(args.registry)
            if args.registry and Registry.is_registry(args.registry)
            else None
        )
        traffic, _ = kafka_traffic(kafka_settings(args), window_config(args), registry)
        table, exclusions = traffic.table, traffic.excluded
    elif args.input is not None:
        table = load_table(args.input)
    else:
        raise TrainingError("give --input FILE or --from-kafka")
    if args.registry is not None:
        writable = WritableRegistry.create(args.registry)
        version = register(writable, table, config, exclusions)
        print(version)
        if args.promote:
            sampled = load_table(args.sample) if args.sample else None
            result = promote(
                writable,
                version,
                None if sampled is None else sampled.X,
                gate,
                force=args.force,
                allow_feature_change=args.allow_feature_change,
                sample_entities=None if sampled is None else sampled.entities,
            )
            print(gate_line(version, result))
            return 0 if result.accepted else EXIT_REJECTED
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
    judged = decide(scorer, scores, table, args)
    with args.output.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "score", "alert", "threshold"])
        for i, (s, alert, threshold) in enumerate(
            zip(scores.tolist(), judged.alert.tolist(), judged.threshold.tolist(), strict=True)
        ):
            writer.writerow([i, f"{s:.9g}", int(alert), f"{threshold:.9g}"])
    logger.info(
        "scored %d rows with model %s into %s", len(scores), scorer.metadata.version, args.output
    )
    return 0


def decide(scorer: Scorer, scores: np.ndarray, table: Table, args: argparse.Namespace) -> Judgement:
    """The worker's decisions on the rows, in order (``--threshold-mode`` as
    ``ANOMALY_THRESHOLD_MODE``): the model's threshold, or each entity's recent past."""
    meta = scorer.metadata
    return judge(
        meta.threshold,
        meta.calibration.expected_alert_rate,
        scores,
        table.entities,
        args.threshold_mode,
        args.recent_window,
        args.recent_warmup,
    )


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
    registry = WritableRegistry(args.registry)
    sampled: Table | None = None
    if args.sample:
        sampled = load_table(args.sample)
    elif args.sample_from_kafka:
        traffic, _ = kafka_traffic(kafka_settings(args), window_config(args), registry)
        sampled = traffic.table
    result = promote(
        registry,
        args.version,
        None if sampled is None else sampled.X,
        gate_config(args),
        force=args.force,
        allow_feature_change=args.allow_feature_change,
        sample_entities=None if sampled is None else sampled.entities,
    )
    print(gate_line(args.version, result))
    return 0 if result.accepted else EXIT_REJECTED


def cmd_models_rollback(args: argparse.Namespace) -> int:
    print(rollback(WritableRegistry(args.registry)))
    return 0


def cmd_models_prune(args: argparse.Namespace) -> int:
    for version in prune(WritableRegistry(args.registry), args.keep):
        print(f"removed {version}")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    configs = retrain_configs(args)
    return 0 if retrain_once(*configs) else EXIT_REJECTED


def cmd_schedule(args: argparse.Namespace) -> int:
    period = parse_duration(args.every)
    configs = retrain_configs(args)  # a bad flag fails now, not every period
    configs[2].validate()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    schedule(period, args.every, *configs, stop)
    return 0


# --- arguments -> configuration values -----------------------------------------------------
def kafka_settings(args: argparse.Namespace) -> KafkaSettings:
    """The workers' Kafka settings (``ANOMALY_*``), with this command's overrides."""
    overrides = {
        "bootstrap_servers": args.bootstrap_servers,
        "input_topic": args.topic,
        "alert_topic": args.alert_topic,
    }
    return KafkaSettings(**{k: v for k, v in overrides.items() if v})


def window_config(args: argparse.Namespace) -> WindowConfig:
    return WindowConfig(
        last=args.last,
        since=parse_time(args.since) if args.since else None,
        alert_scan_last=args.alert_scan_last,
        read_timeout_seconds=args.read_timeout,
        read_alert_topic=not args.no_alert_topic,
    )


def fit_config(args: argparse.Namespace, kafka: bool) -> FitConfig:
    trim = args.trim_fraction
    if trim is None:
        trim = KAFKA_TRIM_FRACTION if kafka else FitConfig.trim_fraction
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
        **detector_settings(args),
    )


def gate_config(args: argparse.Namespace) -> GateConfig:
    return GateConfig(
        max_rate_factor=args.max_rate_factor,
        rate_significance=args.rate_significance,
        max_error_increase=args.max_error_increase,
    )


def retrain_configs(
    args: argparse.Namespace,
) -> tuple[KafkaSettings, WindowConfig, FitConfig, GateConfig, RetrainConfig]:
    return (
        kafka_settings(args),
        window_config(args),
        fit_config(args, kafka=True),
        gate_config(args),
        RetrainConfig(
            registry=args.registry,
            keep=args.keep,
            if_drift=args.if_drift,
            drift_threshold=args.drift_threshold,
            drift_from=tuple(args.drift_from or ()),
        ),
    )


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
    """Epoch seconds or ISO-8601 (naive means UTC) -> epoch seconds, as records' ``ts`` reads.

    >>> parse_time("1704067200"), parse_time("2024-01-01T00:00:00")
    (1704067200.0, 1704067200.0)
    """
    value: Any = text
    with contextlib.suppress(ValueError):
        value = float(text)
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise TrainingError(f"not a time: {text!r} (epoch seconds or ISO-8601)") from exc
