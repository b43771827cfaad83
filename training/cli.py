"""``anomaly-train``: fit, score, evaluate, manage the model registry, retrain on a schedule.

Kafka connection settings default to the worker's ``ANOMALY_*`` variables (bootstrap
servers, topics, client, SASL/SSL), so a trainer and a worker can share one configuration.
Option defaults come from the configuration classes (:class:`~training.config.FitConfig`,
:class:`~training.promotion.GateConfig`, :class:`~training.kafka_window.WindowConfig`,
:class:`~training.retrain.RetrainConfig`); :mod:`training.commands` does the work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from training import commands
from training.config import FitConfig
from training.detector_options import add_detector_options
from training.exceptions import TrainingError
from training.kafka_window import WindowConfig
from training.model import ACTIVATIONS
from training.promotion import GateConfig
from training.retrain import KAFKA_TRIM_FRACTION, RetrainConfig
from worker.contract.exceptions import BundleError
from worker.contract.recent_threshold import DEFAULT_WARMUP_RECORDS, DEFAULT_WINDOW_RECORDS
from worker.kafka.settings import describe_validation_error
from worker.observe.logs import configure_logging

__all__ = ["main"]

FIT, GATE, WINDOW = FitConfig(), GateConfig(), WindowConfig()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level.upper())
    try:
        return int(args.handler(args))
    except ValidationError as exc:
        print(f"anomaly-train: {describe_validation_error(exc)}", file=sys.stderr)
    except (TrainingError, BundleError, OSError) as exc:
        print(f"anomaly-train: {exc}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomaly-train", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("model and training")
        g.add_argument(
            "--target-alert-rate",
            type=float,
            default=FIT.target_alert_rate,
            help="quantile rule: share of held-out normal rows that alert (%(default)s)",
        )
        g.add_argument(
            "--threshold-method", choices=["quantile", "mad"], default=FIT.threshold_method
        )
        g.add_argument(
            "--mad-k",
            type=float,
            default=FIT.mad_k,
            help="mad rule: median + k * MAD (%(default)s)",
        )
        g.add_argument(
            "--hidden", help="encoder widths, e.g. 128,64,32 (default: one layer ~2 x D)"
        )
        g.add_argument("--latent", type=int, help="latent size (default D / 2)")
        g.add_argument("--activation", default=FIT.activation, choices=sorted(ACTIVATIONS))
        g.add_argument("--dropout", type=float, default=FIT.dropout)
        g.add_argument("--weight-decay", type=float, default=FIT.weight_decay)
        g.add_argument(
            "--loss", choices=["mse", "bce"], default=FIT.loss, help="bce: features in [0, 1]"
        )
        g.add_argument(
            "--noise", type=float, default=FIT.noise, help="denoising input noise (scaled units)"
        )
        g.add_argument(
            "--trim-fraction",
            type=float,
            default=None,
            help="robust pass: drop the worst-reconstructed share and refit "
            f"(default {FitConfig.trim_fraction:g}, or {KAFKA_TRIM_FRACTION:g} for Kafka traffic)",
        )
        g.add_argument(
            "--ensemble",
            type=int,
            default=FIT.ensemble,
            help="autoencoders averaged, each with its own seed (%(default)s)",
        )
        g.add_argument(
            "--scaling",
            choices=["robust", "minmax"],
            default=FIT.scaling,
            help="input scaling frozen into the bundle (robust: median and IQR)",
        )
        g.add_argument(
            "--score",
            choices=["combined", "reconstruction"],
            default=FIT.score,
            help="combined: reconstruction error + distance to remembered normal rows + "
            "feature tails (default); reconstruction: the autoencoder's error alone",
        )
        g.add_argument(
            "--memory-rows",
            type=int,
            default=FIT.memory_rows,
            help="combined score: normal training rows remembered for the neighbour distance "
            "(%(default)s; 512: ~0.5 us less per record on CPU, a little less accurate)",
        )
        g.add_argument(
            "--memory-subsets",
            type=int,
            default=FIT.memory_subsets,
            help="combined score: random subsets of the memory; the neighbour term is half "
            "the nearest row's distance, half the subsets' average (%(default)s; 1: plain "
            "nearest row)",
        )
        g.add_argument(
            "--sample-rows",
            type=int,
            default=FIT.sample_rows,
            help="combined score: training rows sampled for the tails and the memory (%(default)s)",
        )
        g.add_argument(
            "--memory-trim",
            type=float,
            default=FIT.memory_trim,
            help="combined score: share of sampled rows with the most extreme values left out "
            "of the memory (%(default)s)",
        )
        g.add_argument("--epochs", type=int, default=FIT.epochs)
        g.add_argument("--patience", type=int, default=FIT.patience, help="early stopping (epochs)")
        g.add_argument("--batch-size", type=int, default=FIT.batch_size)
        g.add_argument("--learning-rate", type=float, default=FIT.learning_rate)
        g.add_argument("--seed", type=int, default=FIT.seed, help="same seed and data: same model")
        g.add_argument("--device", choices=["cpu", "cuda"], default=FIT.device)
        g.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_detector_options(p)

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
            default=WINDOW.last,
            help="last N records per partition; bounds memory, also with --since (%(default)s)",
        )
        g.add_argument("--since", help="of those, the records since this time (epoch s or ISO)")
        g.add_argument(
            "--alert-scan-last",
            type=int,
            default=WINDOW.alert_scan_last,
            help="read at most the last N alerts per partition to exclude their ids (%(default)s)",
        )
        g.add_argument(
            "--read-timeout",
            type=float,
            default=WINDOW.read_timeout_seconds,
            help="give up reading a topic's window after this many seconds (%(default)s)",
        )

    def gate_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("promotion gate")
        g.add_argument(
            "--max-rate-factor",
            type=float,
            default=GATE.max_rate_factor,
            help="sample alert rate within calibrated rate x/÷ this (%(default)s)...",
        )
        g.add_argument(
            "--rate-significance",
            type=float,
            default=GATE.rate_significance,
            help="...unless a rate that far off has at least this chance (%(default)s)",
        )
        g.add_argument(
            "--max-error-increase",
            type=float,
            default=GATE.max_error_increase,
            help="allowed rise of median sample error over the current model (%(default)s)",
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
    fit.add_argument(
        "--allow-feature-change",
        action="store_true",
        help="promote although its features differ from the current model's",
    )
    model_options(fit)
    kafka_options(fit)
    gate_options(fit)
    fit.set_defaults(handler=commands.cmd_fit)

    score = sub.add_parser(
        "score", help="one score per input row, in order (the worker's code path)"
    )
    score.add_argument("--model", type=Path, required=True, help="a bundle or a registry")
    score.add_argument("--input", type=Path, required=True)
    score.add_argument("--output", type=Path, required=True, help="CSV: row, score, alert")
    score.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    score.add_argument(
        "--threshold-mode",
        choices=["model", "entity_recent"],
        default="model",
        help="decide as ANOMALY_THRESHOLD_MODE does: the model's threshold, or each entity "
        "against its recent scores (rows in time order; an 'entity' column)",
    )
    score.add_argument(
        "--recent-window",
        type=int,
        default=DEFAULT_WINDOW_RECORDS,
        help="entity_recent: ANOMALY_RECENT_WINDOW_RECORDS (%(default)s)",
    )
    score.add_argument(
        "--recent-warmup",
        type=int,
        default=DEFAULT_WARMUP_RECORDS,
        help="entity_recent: ANOMALY_RECENT_WARMUP_RECORDS (%(default)s)",
    )
    score.set_defaults(handler=commands.cmd_score)

    enc = sub.add_parser(
        "encode", help="the autoencoder's latent features of each input row (a feature extractor)"
    )
    enc.add_argument("--model", type=Path, required=True, help="a bundle or a registry")
    enc.add_argument("--input", type=Path, required=True)
    enc.add_argument(
        "--output", type=Path, required=True, help=".npz: Z [rows, latent] (and y if labelled)"
    )
    enc.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    enc.set_defaults(handler=commands.cmd_encode)

    ev = sub.add_parser("evaluate", help="ROC-AUC, PR-AUC, precision/recall/F1 on labelled rows")
    ev.add_argument("--model", type=Path, required=True)
    ev.add_argument(
        "--input", type=Path, required=True, help="labelled: .npz with y, or .csv with label"
    )
    ev.add_argument("--plot", type=Path, help="write ROC and precision-recall curves (PNG)")
    ev.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    ev.set_defaults(handler=commands.cmd_evaluate)

    models = sub.add_parser("models", help="the registry: list, promote, rollback, prune")
    msub = models.add_subparsers(dest="models_command", required=True)
    for name, handler, helptext in (
        ("list", commands.cmd_models_list, "versions, their state, the current one (*)"),
        (
            "rollback",
            commands.cmd_models_rollback,
            "make the previous current version current again",
        ),
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
    p.add_argument(
        "--allow-feature-change",
        action="store_true",
        help="promote although its features differ from the current model's (workers "
        "refuse it until restarted; do it once the producers send its features)",
    )
    kafka_options(p)
    gate_options(p)
    p.set_defaults(handler=commands.cmd_models_promote)
    p = msub.add_parser("prune", help="remove old versions (never the current or rollback target)")
    p.add_argument("--registry", type=Path, required=True)
    p.add_argument("--keep", type=int, required=True)
    p.set_defaults(handler=commands.cmd_models_prune)

    for name, handler, helptext in (
        (
            "retrain",
            commands.cmd_retrain,
            "one cycle: fit on Kafka traffic, gate, promote (for a CronJob)",
        ),
        ("schedule", commands.cmd_schedule, "retrain in a loop (for compose-style deployments)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--registry", type=Path, required=True)
        if name == "schedule":
            p.add_argument("--every", required=True, help="period, e.g. 6h, 30m")
        p.add_argument(
            "--keep",
            type=int,
            default=RetrainConfig.keep,
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
            default=RetrainConfig.drift_threshold,
            help="the drift that triggers retraining (%(default)s: 'significant' in PSI's bands)",
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
