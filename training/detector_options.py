"""``anomaly-train``'s detector options beyond the autoencoder's (``fit``, ``retrain``,
``schedule``): the neighbour space's scaling and per-entity baselines."""

from __future__ import annotations

import argparse
from typing import Any

from training.config import FitConfig

__all__ = ["add_detector_options", "detector_settings"]

FIT = FitConfig()


def add_detector_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--neighbour-scaling",
        choices=["robust", "range"],
        default=FIT.neighbour_scaling,
        help="combined score: units of the neighbour distance per feature; robust: median and "
        "IQR (default), range: the training range (near-constant metrics stop dominating)",
    )
    g = p.add_argument_group("per-entity baselines")
    g.add_argument(
        "--per-entity",
        action="store_true",
        help="each entity with enough rows gets its own baseline in the bundle (autoencoder, "
        "neighbour memory, tails); other and unseen entities are scored by the generic one "
        "every row trains (needs an 'entity' column, or keyed records from Kafka)",
    )
    g.add_argument(
        "--min-entity-rows",
        type=int,
        default=FIT.min_entity_rows,
        help="normal rows an entity needs for its own baseline (%(default)s)",
    )
    g.add_argument(
        "--max-baselines",
        type=int,
        default=FIT.max_baselines,
        help="at most this many entity baselines, the entities with most rows (%(default)s)",
    )
    g.add_argument(
        "--entity-memory-rows",
        type=int,
        default=FIT.entity_memory_rows,
        help="rows each entity baseline remembers for its neighbour distance (%(default)s)",
    )
    g.add_argument(
        "--entity-tail-cells",
        type=int,
        default=FIT.entity_tail_cells,
        help="cells of each entity baseline's tail table per feature (%(default)s)",
    )


def detector_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The FitConfig fields these options set."""
    return {
        "neighbour_scaling": args.neighbour_scaling,
        "per_entity": args.per_entity,
        "min_entity_rows": args.min_entity_rows,
        "max_baselines": args.max_baselines,
        "entity_memory_rows": args.entity_memory_rows,
        "entity_tail_cells": args.entity_tail_cells,
    }
