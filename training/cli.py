"""``anomaly-train``: fit a model bundle from a file of normal rows."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.data import load_table
from training.exceptions import TrainingError
from training.fit import FitConfig, fit_bundle
from worker.exceptions import BundleError
from worker.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anomaly-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="train an autoencoder and write a model bundle")
    fit.add_argument("--input", required=True, type=Path, help=".npz (X[, y]), .csv or .jsonl")
    fit.add_argument("--output", required=True, type=Path, help="bundle directory to write")
    fit.add_argument(
        "--target-alert-rate",
        type=float,
        default=0.01,
        help="fraction of held-out normal rows to alert (default 0.01)",
    )
    fit.add_argument("--epochs", type=int, default=200, help="most epochs (early stopping)")
    fit.add_argument("--hidden", type=int, default=None, help="hidden width (default from D)")
    fit.add_argument("--latent", type=int, default=None, help="latent size (default D/2)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (runs are reproducible)")
    fit.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    fit.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level.upper())

    config = FitConfig(
        target_alert_rate=args.target_alert_rate,
        epochs=args.epochs,
        hidden=args.hidden,
        latent=args.latent,
        seed=args.seed,
        device=args.device,
    )
    try:
        table = load_table(args.input)
        metadata = fit_bundle(table, args.output, config)
    except (TrainingError, BundleError, OSError) as exc:
        print(f"anomaly-train: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("training").info(
        "wrote model %s to %s: %d features, threshold %.6g (%s, target alert rate %.3g)",
        metadata.version,
        args.output,
        metadata.n_features,
        metadata.threshold,
        metadata.calibration.method,
        metadata.calibration.target_alert_rate,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
